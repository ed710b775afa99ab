"""How the model is spread over ranks: a single process, DDP (a full copy per rank, gradients
averaged) or FSDP2 (``fully_shard``: parameters, gradients and optimizer state sharded; each
decoder layer gathered only while it runs). And, for FSDP2, the full model and optimizer
states a checkpoint holds, gathered from the shards (``torch.distributed.checkpoint``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from homellm.train.distributed import Dist
from homellm.train.lm import LossModel


def wrap(loss_model: LossModel, strategy: str, ctx: Dist) -> torch.nn.Module:
    """The module the loop calls. ``strategy``: single, ddp or fsdp2 (as the memory plan
    chose it)."""
    if not ctx.distributed or strategy == "single":
        return loss_model
    if strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in loss_model.lm.model.layers:
            fully_shard(layer)
        fully_shard(loss_model)
        return loss_model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(loss_model, device_ids=device_ids)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def no_sync(model: torch.nn.Module, sync: bool) -> Any:
    """The context of one micro-batch's backward: gradients are reduced across ranks only on
    the last micro-batch of a step."""
    import contextlib

    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)      # type: ignore[operator]
    return contextlib.nullcontext()


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_ returns a DTensor for sharded parameters."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_copy(lm: torch.nn.Module, ctx: Dist) -> torch.nn.Module | None:
    """Every rank takes part; rank 0 gets an unsharded CPU copy of the model (built on the meta
    device, so nothing is initialised twice), the others None."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(lm, options=_options())
    if not ctx.is_main:
        return None
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(lm.config, dtype=torch.float32)
    copy.load_state_dict(state, assign=True)
    copy.tie_weights()
    # non-persistent buffers (RoPE's inv_freq) are not in a state dict, and FSDP2 leaves
    # buffers whole on every rank: take them from the live model
    live = dict(lm.named_buffers())
    for name, _ in list(copy.named_buffers()):
        module_name, _, buffer_name = name.rpartition(".")
        module = copy.get_submodule(module_name) if module_name else copy
        module.register_buffer(buffer_name, live[name].detach().cpu().clone(),
                               persistent=buffer_name in module.state_dict())
    return copy


def full_optimizer_state(loss_model: torch.nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, Any]:
    """The whole optimizer state keyed by parameter name (a collective: every rank calls)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(loss_model, optimizer, options=_options())


def load_full_optimizer_state(loss_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(loss_model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
