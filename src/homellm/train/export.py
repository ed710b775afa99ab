"""A ``homellm train`` checkpoint → a Hugging Face model folder that engines serve as is.

The folder holds ``config.json`` and ``model.safetensors`` (``save_pretrained``), a
``generation_config.json``, the tokenizer files (with the ChatML template) copied from the
run's tokenizer folder, ``homellm_export.json`` (where it came from) and, on request, a GGUF
file. It is built in a temp folder beside ``out_dir``, fsynced and renamed into place, so a
reader (an engine, ``homellm up``) never sees half of one.

Sampling defaults written to generation_config.json: ``do_sample`` with temperature 0.7 and
top_p 0.9, Qwen-like values that keep a small model from looping under greedy decoding while
staying on topic; requests override them. Generation stops at ``<|im_end|>`` (end of a chat
turn) or ``<|endoftext|>`` (end of a document, what a base model emits).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homellm.errors import HomellmError
from homellm.fsutil import fsync_dir
from homellm.tokenizer import EOT, IM_END, PAD, load_tokenizer, special_id, tokenizer_id
from homellm.train import checkpoint as ckpt

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EXPORT_META = "homellm_export.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
OPTIONAL_TOKENIZER_FILES = ("special_tokens_map.json", "chat_template.jinja")
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
_REQUIRED_KEYS = ("model_config", "tokenizer")


class ExportError(HomellmError):
    """A checkpoint cannot be exported: none found, incomplete, or its tokenizer is gone."""


def find_checkpoint(source: str | os.PathLike[str], *, best: bool = False) -> ckpt.Checkpoint:
    """A verified checkpoint: ``source`` itself when it is a step folder, else the run dir's
    latest valid one (or with ``best`` its lowest val_loss one)."""
    path = Path(source)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint or run folder")
    if (path / ckpt.MANIFEST_FILE).exists() or (path / ckpt.STATE_FILE).exists():
        return ckpt.load(path)
    if best:
        found = ckpt.CheckpointManager(path).best()
        if found is None:
            raise ExportError(f"{ckpt.checkpoints_dir(path)}: no checkpoint with a val_loss")
        return ckpt.load(found)
    latest = ckpt.load_latest(path).checkpoint
    if latest is None:
        raise ExportError(f"{ckpt.checkpoints_dir(path)}: no checkpoint to export")
    return latest


def export_checkpoint(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      best: bool = False, gguf: str | None = None,
                      overwrite: bool = False) -> Path:
    """Export a checkpoint (a step folder, or a run dir: see :func:`find_checkpoint`) into
    ``out_dir`` as a Hugging Face model folder; ``gguf`` ("f16", "q8_0", ...) also writes
    ``model-<gguf>.gguf``. An existing non-empty ``out_dir`` is replaced only with
    ``overwrite``. Returns ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out}: already exists and is not empty (pass overwrite to replace)")
    converter = _check_gguf(gguf)
    found = find_checkpoint(source, best=best)
    config = found.config
    missing = [key for key in _REQUIRED_KEYS if not config.get(key)]
    if missing:
        raise ExportError(f"{found.path}: {ckpt.STATE_FILE} has no config.{missing[0]} "
                          "(saved by an older homellm train?)")
    tok_dir = Path(config["tokenizer"])
    if not tok_dir.is_dir():
        raise ExportError(f"{found.path}: its tokenizer folder {tok_dir} is missing")
    lacking = [name for name in TOKENIZER_FILES if not (tok_dir / name).is_file()]
    if lacking:
        raise ExportError(f"{found.path}: its tokenizer folder {tok_dir} has no {lacking[0]}")
    ids = _special_ids(tok_dir)
    model = _load_model(found, ids, config.get("seq_len"))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        for name in TOKENIZER_FILES + OPTIONAL_TOKENIZER_FILES:  # the chat template is in both
            if (tok_dir / name).is_file():
                shutil.copyfile(tok_dir / name, staging / name)
        meta = {
            "source_checkpoint": str(found.path.resolve()), "step": found.step,
            "tokens_seen": found.tokens_seen, "val_loss": found.val_loss,
            "tokenizer": str(tok_dir.resolve()), "tokenizer_id": tokenizer_id(tok_dir),
            "model": _run_model(config.get("run")),
            "seq_len": config.get("seq_len"), "exported_at": time.time(),
        }
        (staging / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
        if gguf is not None:
            from homellm.engines.gguf import convert_to_gguf

            try:
                convert_to_gguf(staging, staging / f"model-{gguf}.gguf", gguf,
                                converter=converter)
            except HomellmError as exc:  # it names the temp folder; the user knows out_dir
                raise ExportError(str(exc).replace(str(staging), str(out))) from None
        _fsync_tree(staging)
        _replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_gguf(gguf: str | None) -> Path | None:
    """Fail before the slow part when the GGUF conversion cannot happen."""
    if gguf is None:
        return None
    from homellm.engines.gguf import CONVERTER_ENV, OUTTYPES, find_converter

    if gguf not in OUTTYPES:
        raise ExportError(f"unknown GGUF type {gguf!r}: expected {', '.join(OUTTYPES)}")
    converter = find_converter()
    if converter is None:
        raise ExportError("llama.cpp's GGUF converter (convert_hf_to_gguf.py) was not found: "
                          f"run .ci/install-llamacpp.sh, or set {CONVERTER_ENV} to its path")
    return converter


def _special_ids(tok_dir: Path) -> dict[str, int]:
    tokenizer = load_tokenizer(tok_dir)
    ids = {tok: special_id(tokenizer, tok, tok_dir) for tok in (IM_END, EOT, PAD)}
    ids["vocab_size"] = tokenizer.get_vocab_size(with_added_tokens=True)
    return ids


def _load_model(found: ckpt.Checkpoint, ids: dict[str, int],
                seq_len: Any) -> PreTrainedModel:
    from safetensors.torch import load_model
    from transformers import CONFIG_MAPPING, GenerationConfig

    from homellm.train.presets import build_model

    data = found.config["model_config"]
    try:
        config = CONFIG_MAPPING[data["model_type"]].from_dict(dict(data))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{found.path}: config.model_config is not a transformers config "
                          f"({type(exc).__name__}: {exc})") from None
    if config.vocab_size < ids["vocab_size"]:
        raise ExportError(f"{found.path}: vocab_size {config.vocab_size} is below its "
                          f"tokenizer's {ids['vocab_size']}")
    # The chat turn's end is the eos, as in tokenizer_config.json; generation also stops at
    # <|endoftext|> (generation_config lists both).
    config.eos_token_id = ids[IM_END]
    config.pad_token_id = ids[PAD]
    config.bos_token_id = None
    config.use_cache = True  # training turns the KV cache off; serving wants it
    if seq_len:
        # rope_parameters (YaRN included) stay as trained: only the recorded length changes
        config.max_position_embeddings = int(seq_len)
    model = build_model(config)
    try:
        load_model(model, found.path / ckpt.MODEL_FILE, strict=True)
    except RuntimeError as exc:  # torch's message spans several lines
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ExportError(f"{found.path}: weights do not fit config.model_config "
                          f"({lines[-1] if lines else 'mismatch'})") from None
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[EOT]], pad_token_id=ids[PAD], bos_token_id=None,
        **GENERATION_DEFAULTS)
    return model.eval()


def _run_model(run: Any) -> str | None:
    """The run config's ``model`` (a preset name or a config path)."""
    model = run.get("model") if isinstance(run, dict) else None
    return str(model) if model else None


def _fsync_tree(root: Path) -> None:
    for entry in root.rglob("*"):
        if entry.is_file():
            with open(entry, "rb+") as handle:
                os.fsync(handle.fileno())
    fsync_dir(root)


def _replace(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an old ``out`` is renamed aside first, then removed."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
    staging.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
