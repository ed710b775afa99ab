"""Validation and throughput metrics from a summed negative log-likelihood in nats.

Bits per byte divides by the UTF-8 bytes of the decoded target text, as nanochat's
``evaluate_bpb`` does, so it compares across tokenizers; bits per character divides by the
characters. Cyrillic takes 2 bytes a character in UTF-8, so on Russian text bpc is about
2 x bpb: compare bpb only on the same held-out text, and report both.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def eval_metrics(nll_sum_nats: float, n_tokens: int, n_bytes: int,
                 n_chars: int) -> dict[str, float]:
    """``loss`` (nats per token), ``ppl`` (per token), ``bpb`` (bits per UTF-8 byte), ``bpc``
    (bits per character), ``bytes_per_token`` and ``chars_per_token``, all over the same
    counted tokens: ``n_bytes`` and ``n_chars`` must be those of exactly the target tokens
    whose NLL is summed (special and masked tokens left out of all four counts)."""
    if n_tokens < 1 or n_bytes < 1 or n_chars < 1:
        raise ValueError(f"need at least one token, byte and character, got "
                         f"{n_tokens}, {n_bytes}, {n_chars}")
    if n_chars > n_bytes:
        raise ValueError(f"{n_chars} characters cannot take {n_bytes} UTF-8 bytes")
    nll = float(nll_sum_nats)
    if not math.isfinite(nll) or nll < 0:
        raise ValueError(f"the summed NLL must be finite and 0 or more, got {nll}")
    loss = nll / n_tokens
    bits = nll / LN2
    return {
        "loss": loss,
        "ppl": math.exp(loss) if loss < 700 else math.inf,   # exp overflows past ~709
        "bpb": bits / n_bytes,
        "bpc": bits / n_chars,
        "bytes_per_token": n_bytes / n_tokens,
        "chars_per_token": n_chars / n_tokens,
    }


def text_counts(text: str) -> tuple[int, int]:
    """``(UTF-8 bytes, characters)`` of decoded text, for ``eval_metrics``."""
    return len(text.encode("utf-8")), len(text)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation, a fraction in [0, 1] when honest: achieved FLOP/s over the
    hardware peak (all GPUs' peaks together when ``tokens_per_s`` is the whole run's)."""
    if peak_flops <= 0 or flops_per_token <= 0 or tokens_per_s < 0:
        raise ValueError(f"expected positive peak and FLOPs per token and tokens/s >= 0, got "
                         f"{peak_flops}, {flops_per_token}, {tokens_per_s}")
    return tokens_per_s * flops_per_token / peak_flops


def loss_by_position(nll: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL at each position (T,) over the batch's counted tokens, NaN where no sequence
    has a counted token. Falling loss at late positions shows the model uses long context."""
    if nll.dim() != 2:
        raise ValueError(f"expected nll (B, T), got {tuple(nll.shape)}")
    if mask is None:
        return nll.float().mean(dim=0)
    if mask.shape != nll.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match nll {tuple(nll.shape)}")
    weights = mask.to(torch.float32)
    total = (nll.float() * weights).sum(dim=0)
    count = weights.sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)


def bucket_positions(by_position: torch.Tensor, bucket: int) -> torch.Tensor:
    """Averages of ``loss_by_position`` over consecutive buckets of ``bucket`` positions (the
    last may be shorter), ignoring NaN, for a readable plot at 100K positions."""
    if bucket < 1:
        raise ValueError(f"bucket must be 1 or more, got {bucket}")
    means = [chunk.nanmean() for chunk in torch.split(by_position.float(), bucket)]
    return torch.stack(means) if means else by_position.float()
