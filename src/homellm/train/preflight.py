"""The pre-flight memory check of a run: memory per GPU by component at the run's most
demanding stage, refused before the first step in one line naming the setting that would make
it fit (activation checkpointing, a smaller micro-batch, FSDP2, a shorter stage)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homellm.errors import ConfigError
from homellm.modelspec import ModelSpec
from homellm.plan.train_memory import MemoryPlan, choose_layout, memory_plan
from homellm.train.presets import model_config, model_spec, tokenizer_vocab_size
from homellm.train.runconfig import RunConfig, Stage

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def run_model_config(config: RunConfig, vocab_size: int | None = None) -> PretrainedConfig:
    """The transformers config the run builds (``vocab_size`` default: the tokenizer's)."""
    vocab = vocab_size if vocab_size is not None else tokenizer_vocab_size(config.tokenizer)
    return model_config(config.model, vocab, max_position=config.max_seq_len,
                        rope_theta=config.rope_theta, tie=config.tie_embeddings)


def run_model_spec(config: RunConfig, vocab_size: int | None = None) -> ModelSpec:
    """The ModelSpec (parameter counts, memory facts) of the run's model."""
    vocab = vocab_size if vocab_size is not None else tokenizer_vocab_size(config.tokenizer)
    return model_spec(config.model, vocab, max_position=config.max_seq_len,
                      rope_theta=config.rope_theta, tie=config.tie_embeddings)


def preflight_memory(config: RunConfig, gpu_memory_gib: float, n_gpus: int, *,
                     vocab_size: int | None = None, spec: ModelSpec | None = None,
                     device: str = "cuda") -> MemoryPlan:
    """Memory per GPU by component at the run's largest stage (the one needing most). Raises
    ConfigError in one line when it will not fit, naming settings that would make it fit.
    ``device="cpu"``: per process, ``gpu_memory_gib`` being the RAM one process may use."""
    if n_gpus < 1:
        raise ConfigError(f"preflight: n_gpus must be 1 or more, got {n_gpus}")
    spec = spec or run_model_spec(config, vocab_size)
    ac = config.activation_checkpointing
    plans: list[tuple[Stage, str, MemoryPlan]] = []
    for stage in config.stages():
        mb = stage.micro_batch or config.micro_batch
        strategy = _strategy(config, spec, gpu_memory_gib, n_gpus, stage.seq_len, mb, device)
        plan = memory_plan(spec, gpu_memory_gib, strategy=strategy, n_gpus=n_gpus,
                           seq=stage.seq_len, micro_batch=mb, checkpointing=ac, device=device)
        plans.append((stage, strategy, plan))
    stage, strategy, worst = max(plans, key=lambda p: p[2].total.value - p[2].capacity.value)
    if config.precision == "fp32":
        worst.notes.append("estimated with bf16 activations; fp32 activations take twice that")
    if worst.fits:
        return worst
    index = next(i for i, (s, _, _) in enumerate(plans) if s is stage)
    where = f"curriculum stage {index} (seq_len {stage.seq_len}): " if config.curriculum else ""
    mb_key = ("micro_batch" if not config.curriculum or config.curriculum[index].micro_batch
              is None else f"curriculum.{index}.micro_batch")
    seq_key = f"curriculum.{index}.seq_len" if config.curriculum else "seq_len"
    fixes = _fixes(spec, gpu_memory_gib, n_gpus, stage.seq_len, strategy, worst, mb_key, seq_key)
    unit = worst.unit
    units = unit + ("es" if unit == "process" else "s") * (n_gpus > 1)
    raise ConfigError(f"{where}needs {worst.total.value:.1f} GiB per {unit} > "
                      f"{worst.capacity.value:.1f} GiB usable of {round(gpu_memory_gib, 1):g} "
                      f"({strategy}, {n_gpus} {units}): {fixes}")


def describe_memory(plan: MemoryPlan) -> str:
    """One line for the start of a run: the estimate by component, largest first."""
    parts = sorted(plan.components, key=lambda c: -c.value)
    listed = ", ".join(f"{c.label} {c.value:.2f}" for c in parts if c.value >= 0.005)
    return (f"memory per {plan.unit} ({plan.strategy}, micro_batch {plan.micro_batch}"
            f"{', checkpointing' if plan.checkpointing else ''}): {plan.total.value:.1f} GiB of "
            f"{plan.capacity.value:.1f} usable = {listed} GiB")


def _strategy(config: RunConfig, spec: ModelSpec, memory: float, n_gpus: int, seq: int,
              micro_batch: int, device: str) -> str:
    if n_gpus == 1:
        return "single"
    if config.strategy != "auto":
        return config.strategy
    chosen, _, _, _ = choose_layout(spec, memory, n_gpus=n_gpus, seq=seq, strategy="auto",
                                    micro_batch=micro_batch,
                                    checkpointing=config.activation_checkpointing,
                                    device=device)
    return chosen


def _fixes(spec: ModelSpec, memory: float, n_gpus: int, seq: int, strategy: str,
           plan: MemoryPlan, mb_key: str, seq_key: str) -> str:
    def fits(**changes: Any) -> bool:
        args: dict[str, Any] = {"strategy": strategy, "n_gpus": n_gpus, "seq": seq,
                                "micro_batch": plan.micro_batch,
                                "checkpointing": plan.checkpointing, "device": plan.device,
                                **changes}
        return memory_plan(spec, memory, **args).fits

    out = []
    if not plan.checkpointing and fits(checkpointing=True):
        out.append("activation_checkpointing: true")
    best = int(plan.max_micro_batch.value)
    if best >= 1:
        out.append(f"{mb_key}: 1" if best == 1 else f"{mb_key} ≤ {best}")
    if n_gpus > 1 and strategy != "fsdp2":
        if fits(strategy="fsdp2"):
            out.append("strategy: fsdp2")
        elif not plan.checkpointing and fits(strategy="fsdp2", checkpointing=True):
            out.append("strategy: fsdp2 with activation_checkpointing: true")
    if out:
        return "set " + ", or ".join(out)
    # no single change helps: checkpointing (and FSDP2 on several GPUs) together, then shorter
    lean_strategy = "fsdp2" if n_gpus > 1 else strategy
    lean = ["activation_checkpointing: true"] * (not plan.checkpointing)
    lean += ["strategy: fsdp2"] * (lean_strategy != strategy)
    lean_plan = memory_plan(spec, memory, strategy=lean_strategy, n_gpus=n_gpus, seq=seq,
                            micro_batch=1, checkpointing=True, device=plan.device)
    if (k := int(lean_plan.max_micro_batch.value)) >= 1:
        return f"set {', '.join([*lean, f'{mb_key} ≤ {k}'])}"
    shorter = seq // 2
    while shorter >= 16 and not fits(strategy=lean_strategy, seq=shorter, micro_batch=1,
                                     checkpointing=True):
        shorter //= 2
    if shorter < 16:
        return "the model does not fit at any length: use more GPUs or GPUs with more memory"
    return (f"set {', '.join([*lean, f'{mb_key}: 1'])} and {seq_key} ≤ {shorter}, or use more "
            "GPUs or GPUs with more memory")
