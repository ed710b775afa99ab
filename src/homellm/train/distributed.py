"""Processes and devices of a training run: one process (CPU or one GPU), or one process per
GPU (or per CPU worker, on gloo) started by torchrun. homellm never launches workers itself:
``homellm train --gpus 0,1`` builds a ``torchrun`` command line, prints it, and runs it.

Inside a worker, :func:`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK),
joins the process group (NCCL on GPUs, gloo on CPU) and picks the device.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(use_gpu: bool) -> Dist:
    """Join torchrun's process group when started by torchrun; a single process otherwise.
    ``use_gpu`` False keeps every rank on the CPU (gloo), as the tests run."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_gpu and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo",
                                device_id=device if cuda else None)
    return Dist(rank, world_size, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """The sum over ranks (the value itself in a single process)."""
    if ctx.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, ctx: Dist) -> bool:
    """True on every rank when it is true on any: ranks agree to stop at the same step."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ctx: Dist) -> None:
    if ctx.distributed:
        dist.barrier()


def torchrun_command(worker_args: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command line that starts ``nproc`` workers of ``homellm.train.worker`` on
    this machine (``--standalone``: a local rendezvous, no store to set up)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "-m", "homellm.train.worker", *worker_args]


def describe_command(argv: Sequence[str], gpus: Sequence[int] | None) -> str:
    """The command as a person would type it: ``CUDA_VISIBLE_DEVICES=0,1 torchrun ...``."""
    shown = list(argv)
    if shown[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        shown = ["torchrun", *shown[3:]]
    env = f"CUDA_VISIBLE_DEVICES={','.join(map(str, gpus))} " if gpus else ""
    return env + shlex.join(shown)
