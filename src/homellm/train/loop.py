"""The training loop, top to bottom: build, resume, then for each curriculum stage take
optimizer steps of ``grad_accum`` micro-batches, evaluate and checkpoint on schedule.

One process per device: run in-process for one device, or under torchrun (``worker.py``) for
several, where DDP averages gradients. Every rank reads its own windows (the loader gives rank
``r`` the r-th slice of each global step), and the loss of a step is the sum over all ranks and
micro-batches divided by the step's counted targets, so N ranks with accumulation A compute
the same gradient as one process with accumulation N·A.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from homellm.data.reader import WindowLoader
from homellm.fsutil import atomic_write_text
from homellm.tokenizer import load_tokenizer, tokenizer_id
from homellm.train import checkpoint as ckpt
from homellm.train import sharding
from homellm.train.build import (
    TrainError,
    check_memory,
    open_split,
    optimizer_for,
    plan_stages,
    set_rope,
    shards_folder,
)
from homellm.train.distributed import Dist, all_sum, any_rank, barrier, setup, teardown
from homellm.train.evaluate import TokenTable, evaluate, greedy_samples
from homellm.train.lm import LossModel, step_batch
from homellm.train.preflight import describe_memory
from homellm.train.progress import TrainProgress
from homellm.train.runconfig import RunConfig
from homellm.train.runlog import RunLog

RUN_CONFIG_FILE = "run.json"
STOP_FILE = "STOP"   # created by `homellm train` on Ctrl-C for its torchrun workers


@dataclass
class Outcome:
    status: str           # "finished" or "stopped" (Ctrl-C / SIGTERM: saved, resumable)
    step: int
    run_dir: Path


class StopFlag:
    """SIGINT/SIGTERM ask to stop at the next step boundary (saved, resumable). In a single
    process a second Ctrl-C stops at once. Under torchrun every signal only asks: a terminal's
    Ctrl-C reaches the workers and torchrun, which forwards it to them again, and the save
    must survive that second copy (torchrun's own SIGKILL, 30 s later, is the hard stop)."""

    def __init__(self, escalate: bool = True) -> None:
        self.requested = False
        self.escalate = escalate
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and self.escalate and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        with contextlib.suppress(ValueError):   # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _peak_flops(ctx: Dist) -> float | None:
    """Dense bf16 peak of this run's GPUs (all ranks), None on CPU or an unknown GPU."""
    if ctx.device.type != "cuda":
        return None
    from homellm.errors import ConfigError
    from homellm.hardware import find_gpu

    try:
        gpu = find_gpu(torch.cuda.get_device_name(ctx.device))
    except ConfigError:
        return None
    return gpu.bf16_tflops * 1e12 * ctx.world_size if gpu.bf16_tflops else None


def run_training(config: RunConfig, progress: TrainProgress) -> Outcome:
    ctx = setup(use_gpu=config.gpus != [])
    try:
        with StopFlag(escalate=not ctx.distributed) as stop:
            outcome = _train(config, ctx, progress, stop)
        # ranks leave together: gloo aborts a rank that tears down while rank 0 still writes
        # the report
        barrier(ctx)
        return outcome
    except torch.OutOfMemoryError:
        raise TrainError("out of GPU memory (the estimate was too low): set "
                         "activation_checkpointing: true or a smaller micro_batch; the last "
                         "checkpoint is intact") from None
    finally:
        teardown()


def _train(config: RunConfig, ctx: Dist, progress: TrainProgress, stop: StopFlag) -> Outcome:
    run_dir = Path(config.out)
    precision = config.precision_on(ctx.device.type)

    # --- data and tokenizer ---------------------------------------------------------------
    tokenizer = load_tokenizer(config.tokenizer)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    tok_id = tokenizer_id(config.tokenizer)
    folder = shards_folder(config, tok_id)
    train_split = open_split(folder, "train", tok_id, required=True)
    val_split = open_split(folder, "val", tok_id, required=False)
    test_split = open_split(folder, "test", tok_id, required=False)
    assert train_split is not None
    stop_ids = [tokenizer.token_to_id(t) for t in ("<|im_end|>", "<|endoftext|>")]
    stop_ids = [i for i in stop_ids if i is not None]
    table = TokenTable.from_tokenizer(tokenizer, vocab_size)

    # --- what will run, and whether it fits -------------------------------------------------
    stages = plan_stages(config, ctx.world_size)
    total_steps = stages[-1].end_step
    memory = check_memory(config, ctx, vocab_size)
    progress.note(describe_memory(memory))

    # --- model, optimizer, schedule ----------------------------------------------------------
    _seed_everything(config.seed)
    from homellm.train.build import build_lm
    from homellm.train.presets import describe_params

    lm = build_lm(config, vocab_size, ctx.device)
    base_rope = dict(getattr(lm.config, "rope_parameters", None) or {})
    progress.note(describe_params(lm))

    # --- resume: weights before sharding, optimizer state after ----------------------------
    step, tokens_seen, position = 0, 0, {}
    log = RunLog(run_dir)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_CONFIG_FILE, config.model_dump_json(indent=2))
        (run_dir / STOP_FILE).unlink(missing_ok=True)
    barrier(ctx)
    latest, problems = ckpt.load_latest(run_dir)
    for problem in problems:
        progress.note(f"checkpoint: {problem}")
    if latest is not None:
        ckpt.restore_model(latest, lm)
        step, tokens_seen, position = latest.step, latest.tokens_seen, latest.data_position

    if config.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_model = LossModel(lm)
    strategy = memory.strategy
    wrapped = sharding.wrap(loss_model, strategy, ctx)
    sharded = sharding.is_sharded(wrapped)
    model = torch.compile(wrapped) if config.compile else wrapped
    optimizer, scheduler = optimizer_for(lm, config, ctx.device, total_steps)
    if ctx.distributed:
        progress.note(f"{ctx.world_size} ranks, {strategy}")

    if latest is not None:
        load = (partial(sharding.load_full_optimizer_state, wrapped, optimizer) if sharded
                else None)
        ckpt.restore_optimizer(latest, optimizer, scheduler, load_optimizer=load)
        if ctx.rank:   # the checkpoint holds rank 0's RNG; the others get their own stream
            torch.manual_seed(config.seed + 1_000_003 * step + ctx.rank)
        if ctx.is_main:
            log.truncate_after(step)
            log.append({"kind": "event", "step": step, "time": time.time(),
                        "message": f"resumed from {latest.path.name}"})
        progress.note(f"resumed from {latest.path} (step {step}, {tokens_seen:,} tokens)")
    barrier(ctx)

    manager = ckpt.CheckpointManager(run_dir, keep_last=config.checkpoint.keep_last,
                                     every_steps=config.checkpoint.every_steps,
                                     every_minutes=config.checkpoint.every_minutes)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16,
                              enabled=precision == "bf16")
    use_mask = config.objective == "sft"
    flops_per_token = None
    peak = _peak_flops(ctx)
    val_loss: float | None = None

    def save(stage_index: int, loader: WindowLoader) -> None:
        # FSDP2: every rank helps gather the full states; rank 0 writes them
        full = sharding.full_model_copy(lm, ctx) if sharded else lm
        optimizer_state = (sharding.full_optimizer_state(wrapped, optimizer) if sharded
                           else None)
        if ctx.is_main:
            assert full is not None
            state = ckpt.TrainState(
                model=full, optimizer=optimizer, scheduler=scheduler, tokens_seen=tokens_seen,
                data_position={"stage": stage_index, "loader": loader.state_dict()},
                config={"model_config": lm.config.to_dict(), "tokenizer": config.tokenizer,
                        "run": config.model_dump(mode="json"), "seq_len": loader.seq_len},
                val_loss=val_loss, optimizer_state=optimizer_state)
            saved = manager.save(step, state)
            log.append({"kind": "event", "step": step, "time": time.time(),
                        "message": f"checkpoint {saved.path.name}"})
            if config.sample_prompts:
                device = torch.device("cpu") if sharded else ctx.device
                texts = greedy_samples(full, tokenizer, config.sample_prompts, 32, device,
                                       stop_ids)
                for prompt, text in zip(config.sample_prompts, texts, strict=True):
                    log.append({"kind": "sample", "step": step, "time": time.time(),
                                "prompt": prompt, "text": text})
        barrier(ctx)

    def run_eval(split_name: str, stage_seq: int, micro_batch: int) -> float | None:
        split = val_split if split_name == "val" else test_split
        if split is None:
            return None
        result = evaluate(wrapped, split, table, ctx, seq_len=stage_seq,
                          micro_batch=micro_batch, eval_tokens=config.eval_tokens,
                          document_masking=config.document_masking, use_loss_mask=use_mask,
                          precision=precision)
        if result is None:
            return None
        if ctx.is_main:
            now = time.time()
            log.append({"kind": "eval", "step": step, "time": now, "split": split_name,
                        "tokens": result.tokens, **result.metrics})
            log.append({"kind": "positions", "step": step, "time": now, "split": split_name,
                        "bucket": result.bucket, "loss": result.by_position})
        progress.note(f"{split_name} step {step}: loss {result.metrics['loss']:.4f}, "
                      f"bpb {result.metrics['bpb']:.4f}, bpc {result.metrics['bpc']:.4f}")
        return result.metrics["loss"]

    # --- the loop ------------------------------------------------------------------------------
    progress.start(total_steps, step)
    model.train()
    stopped = False
    loader: WindowLoader | None = None
    plan = stages[0]
    for plan in stages:
        if step >= plan.end_step:
            continue
        seq_len, micro_batch = plan.stage.seq_len, plan.micro_batch
        set_rope(lm, base_rope, plan.stage.rope_theta, plan.stage.yarn_factor,
                 config.yarn_original(plan.index))
        loader = WindowLoader(train_split, seq_len, micro_batch, seed=config.seed + plan.index,
                              rank=ctx.rank, world_size=ctx.world_size, mix=plan.stage.mix)
        if position.get("stage") == plan.index:
            loader.load_state_dict(position["loader"])
        elif ctx.is_main and len(stages) > 1:
            log.append({"kind": "event", "step": step, "time": time.time(),
                        "message": f"stage {plan.index}: seq_len {seq_len}"})
        flops_per_token = _flops_per_token(lm, seq_len)

        while step < plan.end_step:
            asked = stop.requested or (ctx.is_main and (run_dir / STOP_FILE).exists())
            if any_rank(asked, ctx):
                stopped = True
                break
            started = time.perf_counter()
            batches = [step_batch(loader.next_batch(), ctx.device,
                                  document_masking=config.document_masking,
                                  use_loss_mask=use_mask)
                       for _ in range(config.grad_accum)]
            counted = all_sum(torch.tensor(sum(b.counted for b in batches),
                                           dtype=torch.float64, device=ctx.device), ctx)
            # DDP averages gradients over ranks: scale by world size so the sum over ranks
            # and micro-batches divided by the step's counted targets is what remains
            scale = ctx.world_size / max(float(counted), 1.0)
            loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
            for index, batch in enumerate(batches):
                last = index == len(batches) - 1
                with sharding.no_sync(wrapped, sync=last), autocast:
                    part, _ = model(batch.inputs, batch.targets, batch.positions)
                    (part * scale).backward()
                loss_sum += part.detach().double()
            grad_norm = None
            if config.grad_clip is not None:
                grad_norm = sharding.grad_norm_value(
                    torch.nn.utils.clip_grad_norm_(lm.parameters(), config.grad_clip))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(all_sum(loss_sum, ctx)) / max(float(counted), 1.0)
            if not math.isfinite(loss):
                raise TrainError(f"step {step + 1}: loss is {loss}; lower lr or check the "
                                 "data (the last checkpoint is intact; resume with --resume)")
            step += 1
            tokens_seen += plan.tokens_per_step
            elapsed = time.perf_counter() - started
            tokens_per_s = plan.tokens_per_step / elapsed
            mfu = tokens_per_s * flops_per_token / peak if peak and flops_per_token else None
            memory_gib = (torch.cuda.max_memory_allocated(ctx.device) / 2**30
                          if ctx.device.type == "cuda" else None)
            if ctx.is_main:
                log.append({"kind": "train", "step": step, "time": time.time(),
                            "tokens": tokens_seen, "loss": loss, "lr": lr,
                            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "mfu": mfu,
                            "memory_gib": memory_gib, "seq_len": seq_len,
                            "stage": plan.index})
            progress.step(step, loss=loss, tokens_per_s=tokens_per_s, mfu=mfu)

            finishing = step == total_steps
            if step % config.eval_every == 0 or finishing:
                val_loss = run_eval("val", seq_len, micro_batch) or val_loss
                _write_report(run_dir, ctx)
            if manager.due(step) or finishing:
                save(plan.index, loader)
        if stopped:
            break

    if stopped:
        assert loader is not None
        if manager.last_saved_step != step:
            save(plan.index, loader)
        if ctx.is_main:
            (run_dir / STOP_FILE).unlink(missing_ok=True)
            log.append({"kind": "event", "step": step, "time": time.time(),
                        "message": "stopped by a signal; resume with `homellm train "
                                   f"--resume {run_dir}`"})
            _write_report(run_dir, ctx)
        progress.finish(step, stopped=True)
        return Outcome("stopped", step, run_dir)

    run_eval("test", stages[-1].stage.seq_len, stages[-1].micro_batch)
    if config.needle_probe and sharded:
        progress.note("needle probe: not run under FSDP2 (the probe runs on one device)")
    elif config.needle_probe and test_split is not None and ctx.is_main:
        _needle(lm, tokenizer, test_split, stages[-1].stage.seq_len, step, log, ctx, progress)
    _write_report(run_dir, ctx)
    progress.finish(step, stopped=False)
    return Outcome("finished", step, run_dir)


def _flops_per_token(lm: torch.nn.Module, seq_len: int) -> float | None:
    from homellm.train.presets import config_spec

    try:
        return config_spec(lm.config).train_flops_per_token(seq_len)
    except (ValueError, KeyError):
        return None


def _write_report(run_dir: Path, ctx: Dist) -> None:
    if ctx.is_main:
        from homellm.train.report import write_report

        write_report(run_dir)


def _needle(lm: torch.nn.Module, tokenizer: Any, test_split: Any, seq_len: int, step: int,
            log: RunLog, ctx: Dist, progress: TrainProgress) -> None:
    """The needle-in-a-haystack probe on held-out (test split) text."""
    from homellm.train.probe import default_grid, needle_probe

    texts = _heldout_texts(tokenizer, test_split, max_tokens=4 * seq_len)
    lengths, depths = default_grid(seq_len)
    lengths = [n for n in lengths if n >= 64]
    if not texts or not lengths:
        return
    results = needle_probe(lm, tokenizer, texts, lengths, depths, device=ctx.device)
    for r in results:
        log.append({"kind": "needle", "step": step, "time": time.time(), "length": r.length,
                    "depth": r.depth, "accuracy": r.accuracy, "trials": r.trials,
                    "chance": r.chance})
    mean = sum(r.accuracy for r in results) / len(results)
    progress.note(f"needle probe: mean accuracy {mean:.2f} (chance {results[0].chance:.2f})")


def _heldout_texts(tokenizer: Any, shards: Any, max_tokens: int) -> list[str]:
    """Documents of the test split decoded back to text (byte-level BPE round-trips)."""
    stop = min(len(shards), max_tokens)
    starts = [int(s) for s in shards.doc_starts(0, stop)] + [stop]
    texts = []
    for a, b in itertools.pairwise(starts):
        text = tokenizer.decode(shards.tokens(a, b).tolist(), skip_special_tokens=True)
        if text.strip():
            texts.append(text)
    return texts
