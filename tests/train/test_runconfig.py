"""The run config file: FILE:LINE errors, overrides, the curriculum, the pre-flight memory check."""

from __future__ import annotations

from pathlib import Path

import pytest

from homellm.errors import ConfigError
from homellm.train.preflight import (
    describe_memory,
    preflight_memory,
    run_model_config,
    run_model_spec,
)
from homellm.train.presets import preset_config
from homellm.train.runconfig import (
    RunConfig,
    apply_overrides,
    load_run_config,
    parse_run_config,
)

BASE = """\
model: 125M
tokenizer: tok
dataset: shards
out: runs/first
tokens: 1000000000
"""


def parse(extra: str = "", base: str = BASE) -> RunConfig:
    return parse_run_config(base + extra, "run.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_run_config(text, "run.yaml")
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_every_knob() -> None:
    config = parse("""\
seq_len: 4096
micro_batch: 4
grad_accum: 8
lr: 6.0e-4
min_lr: 6.0e-5
warmup_steps: 2000
schedule: wsd
decay_fraction: 0.1
weight_decay: 0.05
betas: [0.9, 0.98]
grad_clip: 0.5
eval_every: 250
eval_tokens: 2000000
checkpoint: {every_steps: 500, every_minutes: 15, keep_last: 2}
seed: 7
precision: bf16
activation_checkpointing: true
compile: true
document_masking: false
rope_theta: 500000
gpus: [0, 1]
strategy: fsdp2
""")
    assert config.model == "125m" and config.preset == "125m"
    assert config.schedule == "wsd" and config.decay_fraction == 0.1
    assert config.betas == (0.9, 0.98) and config.checkpoint.keep_last == 2
    assert config.gpus == [0, 1] and config.strategy == "fsdp2"
    assert config.token_budget == 1_000_000_000 and config.max_seq_len == 4096
    plain = parse()
    assert plain.document_masking and not plain.compile and plain.precision == "bf16"
    assert plain.schedule == "cosine" and plain.strategy == "auto" and plain.gpus is None


def test_numbers_as_people_write_them() -> None:
    config = parse("lr: 3e-4\neval_tokens: 2.5M\n", base=BASE.replace("1000000000", "20B"))
    assert (config.lr, config.tokens, config.eval_tokens) == (3e-4, 20 * 10**9, 2_500_000)
    assert parse("", base=BASE.replace("1000000000", "2.0e+10")).tokens == 2 * 10**10
    assert parse("", base=BASE.replace("1000000000", "1_000")).tokens == 1000
    assert error_of(BASE.replace("1000000000", "lots")).startswith(
        "run.yaml:5: tokens: Input should be a valid integer")


def test_cpu_forces_fp32() -> None:
    assert parse("gpus: []\nprecision: bf16\n").precision == "fp32"
    assert parse().precision_on("cpu") == "fp32"
    assert parse().precision_on("cuda") == "bf16"


@pytest.mark.parametrize(("extra", "expected"), [
    ("learning_rate: 0.1\n", "run.yaml:6: learning_rate: unknown field"),
    ("lr: fast\n", "run.yaml:6: lr: Input should be a valid number"),
    ("lr: -0.001\n", "run.yaml:6: lr: Input should be greater than 0"),
    ("schedule: linear\n", "run.yaml:6: schedule: expected 'cosine' or 'wsd', got 'linear'"),
    ("\ncheckpoint:\n  keep_last: 0\n", "run.yaml:8: checkpoint.keep_last: Input should be "
                                        "greater than or equal to 1"),
    ("checkpoint: {every_hours: 1}\n", "run.yaml:6: checkpoint.every_hours: unknown field"),
    ("betas: [0.9, 1.5]\n", "run.yaml:6: betas: expected two numbers in [0, 1)"),
    ("precision: fp16\n", "run.yaml:6: precision: expected 'bf16' or 'fp32'"),
    ("strategy: zero3\n", "run.yaml:6: strategy: expected 'auto', 'ddp' or 'fsdp2'"),
    ("gpus: [0, 0]\n", "run.yaml:6: gpus: a GPU is listed twice"),
    ("lr: 1.0e-4\nmin_lr: 1.0e-3\n", "run.yaml:7: min_lr: 0.001 is above lr 0.0001"),
    ("max_steps: 100\n", "run.yaml:5: tokens: set max_steps or tokens, not both"),
])
def test_errors_name_file_line_and_field(extra: str, expected: str) -> None:
    assert error_of(BASE + extra).startswith(expected)


def test_missing_fields_and_bad_yaml() -> None:
    assert error_of("model: tiny\ntokenizer: t\ndataset: d\ntokens: 5\n") == \
        "run.yaml:1: out: required field is missing"
    assert error_of("model: tiny\ntokenizer: t\ndataset: d\nout: o\n").startswith(
        "run.yaml:1: max_steps: set max_steps or tokens")
    assert error_of("model: [tiny\n").startswith("run.yaml:2: YAML syntax error")
    assert error_of("- a\n") .startswith("run.yaml:1: expected a mapping")


CURRICULUM = """\
model: 1.3b
tokenizer: tok
dataset: shards
out: runs/long
curriculum:
  - {seq_len: 2048, tokens: 20000000000, mix: {books: 0.5, dialogues: 0.5}}
  - {seq_len: 16384, tokens: 1000000000, rope_theta: 1000000, micro_batch: 2}
  - seq_len: 65536
    tokens: 200000000
    micro_batch: 1
"""


def test_curriculum() -> None:
    config = parse_run_config(CURRICULUM, "run.yaml")
    assert config.token_budget == 21_200_000_000 and config.max_seq_len == 65536
    stages = config.stages()
    assert [s.micro_batch for s in stages] == [8, 2, 1]
    assert [s.rope_theta for s in stages] == [None, 1_000_000, None]
    assert stages[0].mix == {"books": 0.5, "dialogues": 0.5}
    assert config.seq_len == 2048
    short = CURRICULUM.replace("    tokens: 200000000", "    tokens: 0.2B")
    assert parse_run_config(short, "r.yaml").token_budget == config.token_budget
    assert apply_overrides(config, {"micro_batch": 4}).stages()[0].micro_batch == 4


@pytest.mark.parametrize(("change", "expected"), [
    (("16384", "1024"), "run.yaml:7: curriculum.1.seq_len: stages must grow in length, "
                        "1024 follows 2048"),
    (("    tokens: 200000000", "    tokens: 0"), "run.yaml:9: curriculum.2.tokens: Input "
                                                 "should be greater than 0"),
    (("dialogues: 0.5", "dialogues: -1"), "run.yaml:6: curriculum.0.mix: weights must be 0 or "
                                          "more"),
    (("rope_theta: 1000000", "rope_theta: -5"), "run.yaml:7: curriculum.1.rope_theta: Input "
                                                "should be greater than 0"),
    (("out: runs/long", "out: runs/long\ntokens: 5"), "run.yaml:5: tokens: the curriculum's "
                                                      "stages set the token budget"),
    (("out: runs/long", "out: runs/long\nseq_len: 4096"), "run.yaml:5: seq_len: the "
                                                          "curriculum's stages set the lengths"),
])
def test_curriculum_errors(change: tuple[str, str], expected: str) -> None:
    assert error_of(CURRICULUM.replace(*change, 1)).startswith(expected)


def test_empty_curriculum() -> None:
    assert error_of(BASE + "curriculum: []\n").startswith(
        "run.yaml:6: curriculum: List should have at least 1 item")


def test_overrides_validated_like_the_file() -> None:
    config = parse("lr: 1.0e-3\n")
    changed = apply_overrides(config, {"lr": 3e-4, "micro_batch": 8,
                                       "checkpoint.keep_last": 5, "activation-checkpointing": True})
    assert (changed.lr, changed.micro_batch, changed.checkpoint.keep_last) == (3e-4, 8, 5)
    assert changed.activation_checkpointing and config.lr == 1e-3
    assert changed.checkpoint.every_steps == 1000        # the rest of the section kept
    for overrides, expected in [({"lr": -1}, "--lr: Input should be greater than 0"),
                                ({"learning_rate": 1}, "--learning_rate: unknown setting"),
                                ({"checkpoint.every": 1}, "--checkpoint.every: unknown setting"),
                                ({"schedule": "step"}, "--schedule: expected 'cosine' or 'wsd'"),
                                ({"min_lr": 1.0}, "--min-lr: 1 is above lr 0.001"),
                                ({"max_steps": 10}, "--tokens: set max_steps or tokens")]:
        with pytest.raises(ConfigError) as info:
            apply_overrides(config, overrides)
        assert str(info.value).startswith(expected), str(info.value)
    assert apply_overrides(parse("gpus: []\n"), {"gpus": [0]}).precision == "bf16"


def test_load_resolves_and_checks_paths(tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "shards").mkdir()
    file = tmp_path / "run.yaml"
    file.write_text(BASE)
    config = load_run_config(file)
    assert config.tokenizer == str(tmp_path / "tok") and config.out == str(tmp_path / "runs/first")
    assert config.model == "125m"
    file.write_text(BASE.replace("125M", "my-model.json"))
    with pytest.raises(ConfigError, match=r"run\.yaml:1: model: 'my-model.json': neither a preset"):
        load_run_config(file)
    file.write_text(BASE.replace("shards", "missing"))
    with pytest.raises(ConfigError, match=r"run\.yaml:3: dataset: 'missing': no such folder"):
        load_run_config(file)
    with pytest.raises(ConfigError, match="run config file not found"):
        load_run_config(tmp_path / "nope.yaml")
    assert load_run_config(file, check_paths=False).dataset == str(tmp_path / "missing")


def test_sft_from_an_export_needs_no_model(tmp_path: Path) -> None:
    for name in ("tok", "shards", "export"):
        (tmp_path / name).mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    file = tmp_path / "run.yaml"
    sft = "objective: sft\nmax_steps: 10\nwarmup_steps: 2\n"
    file.write_text("tokenizer: tok\ndataset: shards\nout: runs/sft\ninit_from: export\n" + sft)
    config = load_run_config(file)
    assert config.model == config.init_from == str(tmp_path / "export")
    assert config.preset is None
    file.write_text(BASE.replace("tokens: 1000000000\n", "init_from: export\n" + sft))
    assert load_run_config(file).model == "125m"  # an explicit model: still wins
    file.write_text("tokenizer: tok\ndataset: shards\nout: runs/sft\nmax_steps: 10\n")
    with pytest.raises(ConfigError, match=r"model: required field is missing"):
        load_run_config(file)


def test_preflight_refuses_what_cannot_fit() -> None:
    config = parse("seq_len: 131072\nmicro_batch: 4\n", base=BASE.replace("125M", "3b"))
    with pytest.raises(ConfigError) as info:
        preflight_memory(config, 96, 1, vocab_size=32000)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert message.startswith("needs ") and "GiB per GPU > 88.3 GiB usable of 96" in message
    assert "activation_checkpointing: true" in message and "seq_len ≤ 65536" in message
    short = apply_overrides(config, {"seq_len": 8192, "micro_batch": 8})
    with pytest.raises(ConfigError, match=r"set activation_checkpointing: true, or micro_batch: "
                                          r"1$"):
        preflight_memory(short, 96, 1, vocab_size=32000)
    with pytest.raises(ConfigError, match=r"\(ddp, 4 GPUs\): .*strategy: fsdp2"):
        preflight_memory(apply_overrides(short, {"strategy": "ddp"}), 24, 4, vocab_size=32000)


def test_preflight_accepts_what_fits() -> None:
    config = parse("seq_len: 4096\nmicro_batch: 4\nactivation_checkpointing: true\n",
                   base=BASE.replace("125M", "3b"))
    plan = preflight_memory(config, 96, 1, vocab_size=32000)
    assert plan.fits and plan.strategy == "single" and plan.micro_batch == 4
    labels = [c.label for c in plan.components]
    assert any("weights" in label for label in labels) and any("activations" in label
                                                                for label in labels)
    assert plan.total.value == pytest.approx(sum(c.value for c in plan.components))
    line = describe_memory(plan)
    assert line.startswith("memory per GPU (single, micro_batch 4, checkpointing): ")
    assert "weights (fp32) 11.23" in line and "\n" not in line
    multi = preflight_memory(apply_overrides(config, {"gpus": [0, 1, 2, 3]}), 96, 4,
                             vocab_size=32000)
    assert multi.strategy in ("ddp", "fsdp2") and multi.fits


def test_preflight_checks_the_hungriest_curriculum_stage() -> None:
    config = parse_run_config(CURRICULUM, "run.yaml")
    with pytest.raises(ConfigError) as info:
        preflight_memory(config, 48, 1, vocab_size=32000)
    message = str(info.value)
    assert message.startswith("curriculum stage 2 (seq_len 65536): needs ")
    assert message.endswith("set activation_checkpointing: true, curriculum.2.micro_batch: 1 and "
                            "curriculum.2.seq_len ≤ 32768, or use more GPUs or GPUs with more "
                            "memory")
    plan = preflight_memory(apply_overrides(config, {"activation_checkpointing": True}), 141, 1,
                            vocab_size=32000)
    assert plan.fits and plan.micro_batch == 1


def _word_tokenizer(folder: Path, size: int) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir()
    vocab = {f"w{i}": i for i in range(size - 1)} | {"<unk>": size - 1}
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(folder / "tokenizer.json"))


def test_model_from_preset_or_config_path(tmp_path: Path) -> None:
    _word_tokenizer(tmp_path / "tok", 300)
    (tmp_path / "shards").mkdir()
    file = tmp_path / "run.yaml"
    file.write_text(BASE.replace("125M", "tiny") + "rope_theta: 500000\nseq_len: 512\n"
                    "tie_embeddings: false\n")
    config = load_run_config(file)
    built = run_model_config(config)
    assert built.vocab_size == 300 and built.max_position_embeddings == 512
    assert built.rope_parameters["rope_theta"] == 500000 and not built.tie_word_embeddings
    assert run_model_spec(config).params.lm_head == 300 * 128
    preset_config("tiny", 1000).save_pretrained(tmp_path / "mine")
    file.write_text(BASE.replace("125M", "mine"))
    from_path = load_run_config(file)
    assert from_path.preset is None and run_model_config(from_path).vocab_size == 1000
    assert run_model_spec(from_path).vocab_size == 1000
    assert preflight_memory(from_path, 24, 1).fits
    preset_config("tiny", 200).save_pretrained(tmp_path / "mine")
    with pytest.raises(ConfigError, match="vocab_size 200 is below the tokenizer's 300"):
        run_model_spec(from_path)
