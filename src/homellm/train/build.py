"""The pieces a run is built from, before its first step: the shards, the stage plan, the
model, the optimizer and schedule, the memory check. ``loop.py`` calls these in order."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from homellm.data.layout import DatasetLayout
from homellm.data.reader import ShardSet, WindowLoader
from homellm.data.shards import MANIFEST, ShardError
from homellm.errors import ConfigError, HomellmError
from homellm.plan.train_memory import MemoryPlan
from homellm.train.distributed import Dist
from homellm.train.preflight import preflight_memory, run_model_config
from homellm.train.runconfig import RunConfig, Stage
from homellm.train.schedule import lambda_for

SHARDS_FORMAT = "homellm-shards"  # every version of the shards manifest


class TrainError(HomellmError):
    """A run that cannot start or go on (bad data, mismatched tokenizer, no memory)."""


# --- data --------------------------------------------------------------------------------------

def _is_shards_folder(folder: Path) -> bool:
    """A shards folder's manifest names its tokenizer; the dataset folder's own manifest.json
    (inputs and split counts from ``homellm data``) does not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        # unreadable: ShardSet.open names the problem, unless this is plainly a dataset folder
        return not (folder / "tokens").is_dir()
    if not isinstance(manifest, dict):
        return True
    return "tokenizer" in manifest or str(manifest.get("format", "")).startswith(SHARDS_FORMAT)


def _tokenized_with(dataset: Path) -> list[str]:
    """The tokenizer ids the dataset folder holds shards for."""
    tokens = DatasetLayout(dataset).root / "tokens"
    if not tokens.is_dir():
        return []
    return sorted(p.name for p in tokens.iterdir() if (p / MANIFEST).is_file())


def shards_folder(config: RunConfig, tok_id: str) -> Path:
    """``dataset`` may be the shards folder or the dataset folder holding
    ``tokens/<tokenizer id>`` (the id: tokenizer.json's sha256, as ``data tokenize`` names it)."""
    dataset = Path(config.dataset)
    if _is_shards_folder(dataset):
        return dataset
    candidate = DatasetLayout(dataset).tokens(tok_id)
    if (candidate / MANIFEST).exists():
        return candidate
    others = _tokenized_with(dataset)
    has = (f"has tokens for tokenizer{'s' if len(others) > 1 else ''} {', '.join(others)} only"
           if others else "has no token shards")
    raise TrainError(f"{dataset}: {has}, not for the run's tokenizer {tok_id} (run `homellm "
                     f"data tokenize {dataset} --tokenizer {config.tokenizer}`)")


def open_split(folder: Path, split: str, tok_id: str, *, required: bool) -> ShardSet | None:
    try:
        shards = ShardSet.open(folder, split)
    except ShardError as exc:
        if required:
            raise TrainError(str(exc)) from None
        return None
    if shards.tokenizer_id != tok_id:
        raise TrainError(f"{folder}: tokenized with tokenizer {shards.tokenizer_id}, the run "
                         f"uses {tok_id} (tokenize again with this tokenizer)")
    return shards


def check_data(config: RunConfig, world_size: int) -> str:
    """What a start checks of the data before its first step, for ``--dry-run`` and the
    launcher: the tokenizer loads, the shards resolve, their manifest matches the tokenizer,
    every file has its size, and each stage has a step of windows (and its mix's sources).
    Returns one line naming the shards used."""
    from homellm.tokenizer import load_tokenizer, tokenizer_id

    load_tokenizer(config.tokenizer)
    tok_id = tokenizer_id(config.tokenizer)
    folder = shards_folder(config, tok_id)
    train = open_split(folder, "train", tok_id, required=True)
    assert train is not None
    val = open_split(folder, "val", tok_id, required=False)
    open_split(folder, "test", tok_id, required=False)
    for plan in plan_stages(config, world_size):
        try:
            WindowLoader(train, plan.stage.seq_len, plan.micro_batch, seed=config.seed,
                         world_size=world_size, mix=plan.stage.mix)
        except ShardError as exc:
            raise TrainError(str(exc)) from None
    val_text = f", val {len(val):,}" if val is not None else ", no val split"
    return f"data: {folder} (train {len(train):,} tokens{val_text})"


# --- the stage plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class StagePlan:
    index: int
    stage: Stage
    micro_batch: int
    first_step: int
    steps: int
    tokens_per_step: int

    @property
    def end_step(self) -> int:
        return self.first_step + self.steps


def plan_stages(config: RunConfig, world_size: int) -> list[StagePlan]:
    """Steps per stage: a stage's token budget over the tokens one optimizer step takes
    (``micro_batch · seq_len · grad_accum · ranks``); ``max_steps`` caps the whole run."""
    plans: list[StagePlan] = []
    step = 0
    for index, stage in enumerate(config.stages()):
        micro_batch = stage.micro_batch or config.micro_batch
        per_step = micro_batch * stage.seq_len * config.grad_accum * world_size
        steps = math.ceil(stage.tokens / per_step) if stage.tokens else config.max_steps or 0
        if config.max_steps is not None:
            steps = min(steps, config.max_steps - step)
        if steps <= 0:
            break
        plans.append(StagePlan(index, stage, micro_batch, step, steps, per_step))
        step += steps
    total = plans[-1].end_step if plans else 0
    if config.warmup_steps > total:
        raise ConfigError(f"warmup_steps: {config.warmup_steps} is more than the run's "
                          f"{total} steps")
    return plans


# --- the model ---------------------------------------------------------------------------------

def attention_for(config: RunConfig, device: torch.device) -> str:
    """The attention kernel: transformers turns restarting position ids into a packed-sequence
    mask for each of them (a dense boolean mask for SDPA, a BlockMask for FlexAttention)."""
    if config.attention != "auto":
        if device.type == "cpu" and config.attention != "sdpa":
            raise ConfigError(f"attention: {config.attention} has no backward on CPU; use "
                              "sdpa (or auto)")
        return config.attention
    return "flex_attention" if device.type == "cuda" and config.document_masking else "sdpa"


def build_lm(config: RunConfig, vocab_size: int, device: torch.device) -> torch.nn.Module:
    """A fresh model of the run's config, or the weights of ``init_from`` (an exported folder),
    with the run's attention kernel."""
    lm = _load_or_build(config, vocab_size, device)
    lm.set_attn_implementation(attention_for(config, device))
    return lm


def _load_or_build(config: RunConfig, vocab_size: int, device: torch.device
                   ) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from homellm.train.presets import build_model

    if config.init_from:
        try:
            lm = AutoModelForCausalLM.from_pretrained(config.init_from, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise TrainError(f"init_from: {config.init_from}: not a loadable model "
                             f"({str(exc).splitlines()[0]})") from None
        if lm.config.vocab_size < vocab_size:
            raise TrainError(f"init_from: {config.init_from}: vocab_size "
                             f"{lm.config.vocab_size} is below the tokenizer's {vocab_size}")
        lm.config.use_cache = False
        return lm.to(device)
    return build_model(run_model_config(config, vocab_size), device=device)


def set_rope(lm: torch.nn.Module, base: dict[str, Any], theta: float | None,
             yarn_factor: float | None, original_length: int) -> None:
    """Set RoPE for a curriculum stage: the model's own ``base`` parameters with the stage's θ
    and YaRN scaling (a stage without them gets the base back, so a resumed run matches an
    uninterrupted one), in the config (export writes it) and the rotary frequencies."""
    config = lm.config
    params = dict(getattr(config, "rope_parameters", None) or {})
    wanted = dict(base)
    if theta:
        wanted["rope_theta"] = float(theta)
    if yarn_factor:
        wanted.update({"rope_type": "yarn", "factor": float(yarn_factor),
                       "original_max_position_embeddings": int(original_length)})
    if wanted == params:
        return
    config.rope_parameters = wanted
    rotary = lm.model.rotary_emb
    device = rotary.inv_freq.device
    lm.model.rotary_emb = type(rotary)(config=config).to(device)


def optimizer_for(lm: torch.nn.Module, config: RunConfig, device: torch.device,
                  total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (fused on GPU) with weight decay on matrices only, and the LR schedule."""
    decay, no_decay = [], []
    for param in lm.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, **fused)
    multiplier = lambda_for(config.lr, lr=config.lr, min_lr=config.min_lr,
                            warmup_steps=config.warmup_steps, max_steps=total_steps,
                            schedule=config.schedule, decay_fraction=config.decay_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return optimizer, scheduler


# --- memory ------------------------------------------------------------------------------------

def _mem_available_gib() -> float:
    text = Path("/proc/meminfo").read_text()
    found = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) / 2**20 if found else 0.0


def check_memory(config: RunConfig, ctx: Dist, vocab_size: int) -> MemoryPlan:
    """The per-GPU estimate by component (or the machine's available RAM on CPU), refused in
    one line naming the setting to change when it will not fit."""
    if ctx.device.type == "cuda":
        memory = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
    else:
        # CPU workers share the machine's memory
        memory = _mem_available_gib() / ctx.world_size
    return preflight_memory(config, memory, ctx.world_size, vocab_size=vocab_size,
                            device="cuda" if ctx.device.type == "cuda" else "cpu")
