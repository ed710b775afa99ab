"""export_checkpoint: a checkpoint becomes a Hugging Face folder with the same logits."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import torch

from homellm.engines.gguf import find_converter
from homellm.errors import HomellmError
from homellm.tokenizer import EOT, IM_END, PAD, load_tokenizer, tokenizer_id, train_tokenizer
from homellm.train.checkpoint import CheckpointManager, TrainState
from homellm.train.export import export_checkpoint
from homellm.train.presets import build_model, preset_config, tokenizer_vocab_size
from tests.data.tokcorpus import write_dataset

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout, _ = write_dataset(tmp_path_factory.mktemp("data"))
    return train_tokenizer(layout, tmp_path_factory.mktemp("tok") / "tok", vocab_size=400,
                           sample_bytes=1 << 20)


def _ids(tok_dir: Path) -> dict[str, int]:
    tokenizer = load_tokenizer(tok_dir)
    return {tok: tokenizer.token_to_id(tok) for tok in (EOT, IM_END, PAD)}


def _model(tok_dir: Path, seed: int = 0, **config: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = preset_config("tiny", tokenizer_vocab_size(tok_dir), max_position=2048, **config)
    return build_model(cfg).eval()


def _save(run_dir: Path, model: torch.nn.Module, tok_dir: Path, step: int,
          val_loss: float | None = None, model_config: dict | None = None,
          drop: str = "") -> Path:
    config = {"model_config": model_config or model.config.to_dict(), "tokenizer": str(tok_dir),
              "run": {"model": "tiny"}, "seq_len": SEQ_LEN}
    config.pop(drop, None)
    state = TrainState(model=model, config=config, tokens_seen=step * 1000, val_loss=val_loss)
    return CheckpointManager(run_dir, keep_last=5).save(step, state).path


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_export_gives_the_same_model_tokenizer_and_generation_config(
        tok_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = _model(tok_dir)
    _save(tmp_path / "run", _model(tok_dir, seed=1), tok_dir, 10)
    source = _save(tmp_path / "run", model, tok_dir, 20, val_loss=3.5)
    out = export_checkpoint(tmp_path / "run", tmp_path / "hf")  # the latest: step 20
    assert out == tmp_path / "hf"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
            "homellm_export.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = [5, 17, 42, 100, 250, 3, 1, 2]
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=1e-6)

    special = _ids(tok_dir)
    config = AutoConfig.from_pretrained(out)
    assert config.max_position_embeddings == SEQ_LEN
    assert config.eos_token_id == special[IM_END] and config.pad_token_id == special[PAD]
    assert config.use_cache is True
    assert config.rope_parameters == model.config.rope_parameters
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [special[IM_END], special[EOT]]
    assert gen.pad_token_id == special[PAD] and gen.bos_token_id is None
    assert gen.do_sample is True and gen.temperature == 0.7 and gen.top_p == 0.9

    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Привет, мир!"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nПривет, мир!<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token_id == special[PAD]
    assert (out / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()

    meta = json.loads((out / "homellm_export.json").read_text())
    assert meta["source_checkpoint"] == str(source.resolve())
    assert (meta["step"], meta["tokens_seen"], meta["val_loss"]) == (20, 20000, 3.5)
    assert meta["tokenizer_id"] == tokenizer_id(tok_dir) and meta["model"] == "tiny"


def test_best_and_explicit_step_folder(tok_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    models = {step: _model(tok_dir, seed=step) for step in (1, 2, 3)}
    paths = {step: _save(tmp_path / "run", m, tok_dir, step, val_loss=loss)
             for (step, m), loss in zip(models.items(), (3.0, 2.0, 2.5), strict=True)}
    ids = [7, 8, 9, 10]
    best = export_checkpoint(tmp_path / "run", tmp_path / "best", best=True)
    assert json.loads((best / "homellm_export.json").read_text())["step"] == 2
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(best), ids),
                               _logits(models[2], ids), rtol=0, atol=1e-6)
    step1 = export_checkpoint(paths[1], tmp_path / "step1")
    assert json.loads((step1 / "homellm_export.json").read_text())["step"] == 1


def test_rope_scaling_is_kept(tok_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    model = _model(tok_dir)
    rope = {"rope_type": "yarn", "rope_theta": 100000.0, "factor": 4.0,
            "original_max_position_embeddings": 16}
    model.config.rope_parameters = rope
    _save(tmp_path / "run", model, tok_dir, 1)
    out = export_checkpoint(tmp_path / "run", tmp_path / "hf")
    assert AutoConfig.from_pretrained(out).rope_parameters == rope


def test_refuses_to_overwrite_unless_asked(tok_dir: Path, tmp_path: Path) -> None:
    _save(tmp_path / "run", _model(tok_dir), tok_dir, 1)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HomellmError, match="already exists and is not empty") as info:
        export_checkpoint(tmp_path / "run", out)
    assert str(out) in str(info.value) and (out / "keep.txt").read_text() == "mine"
    export_checkpoint(tmp_path / "run", out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_checkpoint(tmp_path / "run", empty) / "config.json").is_file()


def _one_line(exc: pytest.ExceptionInfo[HomellmError], *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_errors_name_the_path(tok_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(HomellmError) as info:
        export_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    _one_line(info, str(tmp_path / "nowhere"))
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(HomellmError, match="no checkpoint") as info:
        export_checkpoint(tmp_path / "empty-run", tmp_path / "out")
    _one_line(info, str(tmp_path / "empty-run"))

    path = _save(tmp_path / "run", _model(tok_dir), tok_dir, 1)
    with pytest.raises(HomellmError, match="no checkpoint with a val_loss"):
        export_checkpoint(tmp_path / "run", tmp_path / "out", best=True)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    for source in (tmp_path / "run", path):
        with pytest.raises(HomellmError, match="corrupt") as info:
            export_checkpoint(source, tmp_path / "out")
        _one_line(info, "step-000001", "sha256")
    assert not (tmp_path / "out").exists()

    for key in ("model_config", "tokenizer"):
        path = _save(tmp_path / f"run-{key}", _model(tok_dir), tok_dir, 1, drop=key)
        with pytest.raises(HomellmError, match=f"no config.{key}") as info:
            export_checkpoint(tmp_path / f"run-{key}", tmp_path / "out")
        _one_line(info, str(path))

    gone = tmp_path / "tok-gone"
    path = _save(tmp_path / "run-tok", _model(tok_dir), gone, 1)
    with pytest.raises(HomellmError, match="tokenizer folder") as info:
        export_checkpoint(path, tmp_path / "out")
    _one_line(info, str(gone))

    model = _model(tok_dir)
    wider = {**model.config.to_dict(), "intermediate_size": 512}
    path = _save(tmp_path / "run-shape", model, tok_dir, 1, model_config=wider)
    with pytest.raises(HomellmError, match="weights do not fit") as info:
        export_checkpoint(path, tmp_path / "out")
    _one_line(info, str(path))
    with pytest.raises(HomellmError, match="unknown GGUF type"):
        export_checkpoint(path, tmp_path / "out", gguf="q4_k_m")
    assert not (tmp_path / "out").exists()


def test_gguf_needs_the_converter(tok_dir: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from homellm.engines import gguf as gguf_mod

    _save(tmp_path / "run", _model(tok_dir), tok_dir, 1)
    monkeypatch.setattr(gguf_mod, "find_converter", lambda: None)
    with pytest.raises(HomellmError, match=r"convert_hf_to_gguf\.py") as info:
        export_checkpoint(tmp_path / "run", tmp_path / "out", gguf="f16")
    _one_line(info)
    assert not (tmp_path / "out").exists()


def _llama_cpp() -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (bash .ci/install-llamacpp.sh)")
    return Llama


@pytest.mark.skipif(find_converter() is None,
                    reason="llama.cpp's convert_hf_to_gguf.py is not installed "
                           "(bash .ci/install-llamacpp.sh installs it)")
def test_gguf_conversion(tok_dir: Path, tmp_path: Path) -> None:
    _save(tmp_path / "run", _model(tok_dir), tok_dir, 1)
    out = export_checkpoint(tmp_path / "run", tmp_path / "hf", gguf="f16")
    gguf = out / "model-f16.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # llama.cpp applies no normaliser, so the text is NFC already, as our normaliser would make it
    # "\n\nНет" splits differently under GPT-2's regex: the pre-tokenizer type matters here
    text = unicodedata.normalize(
        "NFC", "«Ёлка» и йод, don't 2025 — Hello, мир!\n\n\tTabs  and   spaces?!\r\n"
               "(слово) «цитата», да.\n\nНет!\n")
    ours = load_tokenizer(tok_dir).encode(text, add_special_tokens=False).ids
    llama = _llama_cpp()
    theirs = llama(model_path=str(gguf), vocab_only=True, verbose=False).tokenize(
        text.encode(), add_bos=False, special=False)
    assert theirs == ours
    assert len(ours) < len(text.encode())  # merges were used, not only single bytes

    model = llama(model_path=str(gguf), n_ctx=SEQ_LEN, n_threads=1, verbose=False)
    model.eval(ours[:16])
    assert model.n_tokens == 16
