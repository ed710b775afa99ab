"""The model as the training loop calls it: token windows in, summed loss out.

``LossModel`` wraps a transformers causal LM so that one ``forward`` returns the summed
cross-entropy and the number of counted targets; DDP and FSDP2 wrap this module, so their
gradient hooks see the whole computation. The LM head runs through the chunked cross-entropy,
so the (tokens x vocab) logits never exist whole.

Document masking: packed windows hold several documents. Positions restart at every document
start, and transformers (``masking_utils.find_packed_sequence_indices``) turns restarting
position ids into a block-diagonal causal mask, so a token attends only within its document
and RoPE counts from the document's start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from homellm.data.reader import Batch
from homellm.train.loss import IGNORE_INDEX, chunked_cross_entropy


@dataclass
class StepBatch:
    """One micro-batch on the device: ``inputs`` and ``targets`` (B, T), ``positions`` (B, T)
    or None, ``counted``: how many targets count toward the loss."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor | None
    counted: int


def document_positions(doc_starts: list[np.ndarray], width: int) -> np.ndarray:
    """Position ids (B, width) restarting at 0 at each document start of each row; a row's
    first token is position 0 even when its document began in an earlier window."""
    out = np.empty((len(doc_starts), width), dtype=np.int64)
    index = np.arange(width, dtype=np.int64)
    for row, starts in enumerate(doc_starts):
        begin = np.zeros(width, dtype=np.int64)
        starts = starts[(starts > 0) & (starts < width)]
        begin[starts] = starts
        out[row] = index - np.maximum.accumulate(begin)
    return out


def step_batch(batch: Batch, device: torch.device, *, document_masking: bool,
               use_loss_mask: bool) -> StepBatch:
    """Tensors for one forward: targets not counted (loss mask 0 under SFT) are IGNORE_INDEX."""
    tokens = torch.from_numpy(batch.tokens)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
    if use_loss_mask:
        keep = torch.from_numpy(batch.mask[:, 1:].astype(np.bool_))
        targets[~keep] = IGNORE_INDEX
    positions = None
    if document_masking:
        positions = torch.from_numpy(document_positions(batch.doc_starts, inputs.shape[1]))
    counted = int((targets != IGNORE_INDEX).sum())
    non_blocking = device.type == "cuda"
    return StepBatch(
        inputs.to(device, non_blocking=non_blocking),
        targets.to(device, non_blocking=non_blocking),
        None if positions is None else positions.to(device, non_blocking=non_blocking),
        counted,
    )


class LossModel(torch.nn.Module):
    """``forward(inputs, targets, positions)`` → ``(loss_sum, n_counted)``."""

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def hidden(self, inputs: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        out = self.lm.model(input_ids=inputs, position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                positions: torch.Tensor | None = None, per_token: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """``(loss_sum, n_counted)``; with ``per_token`` the (B, T) NLL instead (eval: one
        entry point, so DDP and FSDP2 hooks run for eval forwards too)."""
        hidden = self.hidden(inputs, positions)
        if per_token:
            return _token_nll(hidden, self.lm.lm_head.weight, targets, self.chunk_tokens)
        return chunked_cross_entropy(hidden, self.lm.lm_head.weight, targets,
                                     chunk_tokens=self.chunk_tokens)


def _token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               chunk_tokens: int) -> torch.Tensor:
    """Per-target NLL in nats (B, T); IGNORE_INDEX targets get 0. Chunked like the loss."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    parts = []
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        for start in range(0, flat.shape[0], chunk_tokens):
            logits = F.linear(flat[start:start + chunk_tokens].float(), weight.float())
            parts.append(F.cross_entropy(logits, flat_targets[start:start + chunk_tokens],
                                         ignore_index=IGNORE_INDEX, reduction="none"))
    return torch.cat(parts).reshape(targets.shape)


def token_nll(model: torch.nn.Module, batch: StepBatch) -> torch.Tensor:
    """Per-target NLL (B, T) of a batch, without gradients, through ``model`` (a LossModel or
    its DDP/FSDP2 wrapping)."""
    with torch.no_grad():
        return model(batch.inputs, batch.targets, batch.positions, per_token=True)
