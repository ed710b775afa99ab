"""The run config file of ``homellm train``: every knob in one YAML file, validated with pydantic
(unknown fields refused), each error one line ``FILE:LINE: field: what was expected``; flag
overrides go through the same validation. The memory check is ``preflight.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from homellm.config import _nearest_line, read_config_text, read_yaml_mapping
from homellm.errors import ConfigError
from homellm.train.presets import (
    canonical_preset,
    preset_names,
)

if TYPE_CHECKING:
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def _token_count(value: object) -> object:
    """Token counts as people write them: 20_000_000_000, 2.0e10, "20B", "1.5M", "2e10"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "").lower()
        scale = _SUFFIX.get(text[-1:], 1)
        try:
            number = float(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            return value        # pydantic then says what it expected
        return int(number) if number.is_integer() else value
    return value


class Stage(_Strict):
    """One step of a length curriculum: train ``tokens`` tokens at ``seq_len``."""

    seq_len: int = Field(ge=16)
    tokens: int = Field(gt=0, description="tokens trained in this stage")
    rope_theta: float | None = Field(default=None, gt=0, description="None: the run's")
    yarn_factor: float | None = Field(
        default=None, gt=1, description="YaRN: stretch RoPE by this factor over the previous "
        "stage's length (written into the exported config)")
    micro_batch: int | None = Field(default=None, ge=1, description="None: the run's")
    mix: dict[str, float] | None = Field(
        default=None, description="relative weights of dataset sources, e.g. {books: 0.5}")

    _tokens = field_validator("tokens", mode="before")(_token_count)

    @field_validator("mix")
    @classmethod
    def _mix_weights(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is None:
            return mix
        if any(w < 0 or not math.isfinite(w) for w in mix.values()):
            raise ValueError(f"weights must be 0 or more, got {mix}")
        if not any(w > 0 for w in mix.values()):
            raise ValueError("at least one source needs a positive weight")
        return mix


class CheckpointConfig(_Strict):
    every_steps: int | None = Field(default=1000, ge=1)
    every_minutes: float | None = Field(default=30.0, gt=0)
    keep_last: int = Field(default=3, ge=1)


class RunConfig(_Strict):
    """One training run. Relative paths are relative to the run config file's folder."""

    model: str = Field(description="a preset (tiny, 125m, ...) or a HF config.json / folder; "
                       "with init_from, that folder's config.json unless set")
    tokenizer: str = Field(description="the tokenizer folder (its vocabulary sizes the model)")
    dataset: str = Field(description="the dataset folder (its shards for this tokenizer) "
                                     "or the token shards folder itself")
    out: str = Field(description="the run folder: checkpoints, logs, metrics")
    tie_embeddings: bool | None = Field(default=None, description="None: the preset's")
    seq_len: int = Field(default=2048, ge=16)
    micro_batch: int = Field(default=8, ge=1, description="sequences per GPU per forward")
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    min_lr: float = Field(default=3e-5, ge=0)
    warmup_steps: int = Field(default=1000, ge=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(default=0.2, gt=0, le=1,
                                  description="wsd: the final part of training that decays")
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(default=1.0, gt=0, description="None: no clipping")
    max_steps: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1, description="token budget")
    eval_every: int = Field(default=500, ge=1, description="steps")
    eval_tokens: int = Field(default=1_000_000, ge=1)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    seed: int = Field(default=0, ge=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: bool = False
    compile: bool = False
    document_masking: bool = Field(default=True,
                                   description="attention stops at document boundaries")
    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2"] = Field(
        default="auto", description="auto: flex_attention on GPU with document masking (a "
        "sparse block mask instead of SDPA's dense one, which at 108K is 11 GiB a row), "
        "else sdpa")
    rope_theta: float | None = Field(default=None, gt=0, description="None: the preset's")
    yarn_factor: float | None = Field(
        default=None, gt=1, description="YaRN over yarn_original_length (single-stage runs)")
    yarn_original_length: int | None = Field(
        default=None, ge=16, description="the length the model was trained at before YaRN")
    curriculum: list[Stage] | None = Field(default=None, min_length=1)
    gpus: list[int] | None = Field(default=None, description="None: all visible; []: CPU")
    strategy: Literal["auto", "ddp", "fsdp2"] = "auto"
    objective: Literal["pretrain", "sft"] = Field(
        default="pretrain", description="sft: loss only on assistant turns (the shards' mask)")
    init_from: str | None = Field(default=None, description="an exported model folder to "
                                  "start from (required for sft)")
    log_every: int = Field(default=10, ge=1, description="steps between progress lines")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["Однажды", "<|im_start|>user\nПривет!<|im_end|>\n"
                                 "<|im_start|>assistant\n"],
        description="greedy samples at each checkpoint")
    needle_probe: bool = Field(default=True, description="needle-in-a-haystack at the end")
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)  # for FILE:LINE

    _counts = field_validator("tokens", "eval_tokens", mode="before")(_token_count)

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"expected two numbers in [0, 1), got {list(betas)}")
        return betas

    @field_validator("gpus")
    @classmethod
    def _gpus_unique(cls, gpus: list[int] | None) -> list[int] | None:
        if gpus is not None and any(g < 0 for g in gpus):
            raise ValueError("GPU indices are 0 or more")
        if gpus is not None and len(set(gpus)) != len(gpus):
            raise ValueError(f"a GPU is listed twice in {gpus}")
        return gpus

    @model_validator(mode="before")
    @classmethod
    def _model_of_init_from(cls, data: Any) -> Any:
        # a run that starts from an export has its model: the export's config.json
        if isinstance(data, dict) and data.get("model") is None and data.get("init_from"):
            return {**data, "model": data["init_from"]}
        return data

    @field_validator("model")
    @classmethod
    def _model_named(cls, model: str) -> str:
        if not model.strip():
            raise ValueError("expected a preset name or a path")
        return canonical_preset(model) or model

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr:g} is above lr {self.lr:g}")
        if self.curriculum:
            for i in range(1, len(self.curriculum)):
                prev, cur = self.curriculum[i - 1].seq_len, self.curriculum[i].seq_len
                if cur <= prev:
                    raise ValueError(f"curriculum.{i}.seq_len: stages must grow in length, "
                                     f"{cur} follows {prev}")
            if self.tokens is not None:
                raise ValueError("tokens: the curriculum's stages set the token budget; "
                                 "leave tokens out")
            if "seq_len" in self.model_fields_set:
                raise ValueError("seq_len: the curriculum's stages set the lengths; "
                                 "leave seq_len out")
            # so code that reads seq_len at the start sees the length the run starts with
            object.__setattr__(self, "seq_len", self.curriculum[0].seq_len)
        elif self.max_steps is None and self.tokens is None:
            raise ValueError("max_steps: set max_steps or tokens (the token budget)")
        elif self.max_steps is not None and self.tokens is not None:
            raise ValueError("tokens: set max_steps or tokens, not both")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} is more than max_steps "
                             f"{self.max_steps}")
        if self.yarn_factor and not self.yarn_original_length:
            raise ValueError("yarn_original_length: yarn_factor stretches RoPE from a shorter "
                             "trained length: set it (or use curriculum stages)")
        if self.curriculum and self.curriculum[0].yarn_factor:
            raise ValueError("curriculum.0.yarn_factor: YaRN stretches a previous stage's "
                             "length; the first stage has none")
        if self.objective == "sft" and self.init_from is None:
            raise ValueError("init_from: sft starts from a trained model: name its exported "
                             "folder")
        if self.gpus == [] and self.precision != "fp32":
            # bf16 autocast on CPU is slow and unsupported by some kernels: CPU runs are fp32
            object.__setattr__(self, "precision", "fp32")
        return self

    # --- derived values the trainer uses ---------------------------------------------------------

    @property
    def preset(self) -> str | None:
        """The preset name, or None when ``model`` is a config path."""
        return canonical_preset(self.model)

    def precision_on(self, device: str) -> str:
        """fp32 on CPU whatever the file says; the file's choice on GPU."""
        return "fp32" if device == "cpu" else self.precision

    def stages(self) -> list[Stage]:
        """The curriculum, or one stage of the whole run at ``seq_len`` (tokens 0 when the run
        is bounded by max_steps only)."""
        if self.curriculum:
            return [s.model_copy(update={"micro_batch": s.micro_batch or self.micro_batch,
                                         "rope_theta": s.rope_theta or self.rope_theta})
                    for s in self.curriculum]
        return [Stage.model_construct(seq_len=self.seq_len, tokens=self.tokens or 0,
                                      rope_theta=self.rope_theta, micro_batch=self.micro_batch,
                                      yarn_factor=self.yarn_factor, mix=None)]

    def yarn_original(self, stage_index: int) -> int:
        """The pre-YaRN length a stage stretches: the previous stage's, or the run's setting."""
        if self.curriculum and stage_index > 0:
            return self.curriculum[stage_index - 1].seq_len
        return self.yarn_original_length or self.seq_len

    @property
    def max_seq_len(self) -> int:
        return max(s.seq_len for s in self.stages())

    @property
    def token_budget(self) -> int | None:
        if self.curriculum:
            return sum(s.tokens for s in self.curriculum)
        return self.tokens


# --- parsing ---------------------------------------------------------------------------------

def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "literal_error":
        return f"expected {error['ctx']['expected']}, got {error['input']!r}"
    if error["type"] == "missing":
        return "required field is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _field_in_message(message: str) -> tuple[tuple[Any, ...], str] | None:
    """Cross-field errors start with the field they blame: ``curriculum.2.seq_len: ...``."""
    head, sep, rest = message.partition(": ")
    if not sep or " " in head or not head:
        return None
    path = tuple(int(p) if p.isdigit() else p for p in head.split("."))
    return (path, rest) if path[0] in RunConfig.model_fields else None


def _raise_validation(exc: ValidationError, filename: str,
                      lines: dict[tuple[Any, ...], int]) -> None:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    message = _message(dict(error))
    found = _field_in_message(message) if not loc else None
    if found is not None:
        loc, message = found
    line = _nearest_line(lines, loc) or 1
    where = ".".join(str(p) for p in loc) or "(top)"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    raise ConfigError(f"{filename}:{line}: {where}: {message}{more}") from None


def parse_run_config(text: str, filename: str = "run.yaml") -> RunConfig:
    """Validate run config text; raise ConfigError ``FILE:LINE: field: what was expected``."""
    data, lines = read_yaml_mapping(text, filename,
                                    "model:, tokenizer:, dataset: and out:")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, filename, lines)
        raise  # unreachable: _raise_validation always raises
    config._lines = lines
    return config


def load_run_config(path: str | Path, check_paths: bool = True) -> RunConfig:
    """Read and validate a run config file. Relative paths resolve against the file's folder;
    with ``check_paths`` a missing tokenizer, dataset or model config is an error."""
    file = Path(path)
    config = parse_run_config(read_config_text(file, "run config file"), str(file))
    lines = config._lines
    base = file.resolve().parent
    fields = ["tokenizer", "dataset", "out"] + (["model"] if config.preset is None else [])
    fields += ["init_from"] if config.init_from else []
    resolved: dict[str, str] = {}
    for name in fields:
        value = Path(getattr(config, name)).expanduser()
        value = value if value.is_absolute() else base / value
        if check_paths and name != "out" and not value.exists():
            what = (f"neither a preset ({', '.join(preset_names())}) nor an existing "
                    "config.json or model folder" if name == "model" else "no such folder")
            raise ConfigError(f"{file}:{lines.get((name,), 1)}: {name}: "
                              f"{getattr(config, name)!r}: {what}")
        resolved[name] = str(value.resolve())
    out = config.model_copy(update=resolved)
    out._lines = lines
    return out


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy with flag values applied (``{"lr": 3e-4, "checkpoint.keep_last": 5}``), validated
    as the file is; an error names the flag: ``--lr: Input should be greater than 0``."""
    known = config.model_dump()
    # only what the file set, so defaults and derived values are derived again
    data = config.model_dump(exclude_unset=True)
    for key, value in overrides.items():
        path = key.replace("-", "_").split(".")
        schema: Any = known
        holder: Any = data
        for part in path[:-1]:
            if not isinstance(schema, dict) or not isinstance(schema.get(part), dict):
                raise ConfigError(f"--{key}: unknown setting")
            schema, holder = schema[part], holder.setdefault(part, {})
        if not isinstance(schema, dict) or path[-1] not in schema:
            raise ConfigError(f"--{key}: unknown setting")
        holder[path[-1]] = value
    try:
        out = RunConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc, message = tuple(error["loc"]), _message(dict(error))
        found = _field_in_message(message) if not loc else None
        if found is not None:
            loc, message = found
        flag = ".".join(str(p) for p in loc).replace("_", "-") or "config"
        raise ConfigError(f"--{flag}: {message}") from None
    out._lines = config._lines
    return out
