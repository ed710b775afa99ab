"""The learning-rate schedule: linear warmup, then cosine decay to ``min_lr`` or WSD
(warmup-stable-decay). A pure function of the step, so a resumed run needs no scheduler state.

Conventions (the step is the 0-based index of the optimizer step about to be taken):

* Warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, as nanochat's
  ``get_lr_multiplier`` does, so step 0 already moves the weights (``lr / warmup_steps``)
  and step ``warmup_steps - 1`` runs at the full ``lr``.
* Cosine: from ``lr`` at ``step == warmup_steps`` to ``min_lr`` at ``step == max_steps``.
* WSD: stable at ``lr`` until the last ``round(decay_fraction * max_steps)`` steps, then
  ``1-sqrt`` decay to ``min_lr`` at ``step == max_steps``: Hägele et al. 2024, "Scaling Laws
  and Compute-Optimal Training Beyond Fixed Training Durations" (arXiv 2405.18392) found the
  ``1 - sqrt(progress)`` cooldown beats linear at the same length; MiniCPM (arXiv 2404.06395)
  introduced WSD with an exponential decay. ``decay_shape="linear"`` gives nanochat's warmdown.
* Steps at or past ``max_steps`` run at ``min_lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

Schedule = Literal["cosine", "wsd"]
DecayShape = Literal["1-sqrt", "linear"]


def _check(lr: float, min_lr: float, warmup_steps: int, max_steps: int,
           decay_fraction: float) -> None:
    if lr <= 0 or min_lr < 0:
        raise ValueError(f"lr must be positive and min_lr 0 or more, got {lr}, {min_lr}")
    if max_steps < 1 or not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"expected 0 <= warmup_steps <= max_steps and max_steps >= 1, "
                         f"got warmup_steps={warmup_steps}, max_steps={max_steps}")
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
          schedule: Schedule = "cosine", decay_fraction: float = 0.2,
          decay_shape: DecayShape = "1-sqrt") -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    _check(lr, min_lr, warmup_steps, max_steps, decay_fraction)
    if step < 0:
        raise ValueError(f"step must be 0 or more, got {step}")
    if step >= max_steps:
        return min_lr
    warm = lr * (step + 1) / warmup_steps if step < warmup_steps else lr
    if schedule == "cosine":
        if step < warmup_steps:
            return warm
        progress = (step - warmup_steps) / (max_steps - warmup_steps)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule != "wsd":
        raise ValueError(f"schedule must be 'cosine' or 'wsd', got {schedule!r}")
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return warm
    progress = (step - decay_start) / decay_steps
    if decay_shape == "1-sqrt":
        factor = 1.0 - math.sqrt(progress)
    elif decay_shape == "linear":
        factor = 1.0 - progress
    else:
        raise ValueError(f"decay_shape must be '1-sqrt' or 'linear', got {decay_shape!r}")
    # A short run whose warmup reaches into the decay takes the lower of the two.
    return min(warm, min_lr + factor * (lr - min_lr))


def lambda_for(optimizer_lr: float, *, lr: float, min_lr: float, warmup_steps: int,
               max_steps: int, schedule: Schedule = "cosine", decay_fraction: float = 0.2,
               decay_shape: DecayShape = "1-sqrt") -> Callable[[int], float]:
    """A multiplier function for ``torch.optim.lr_scheduler.LambdaLR``: with the optimizer
    built at ``optimizer_lr``, ``LambdaLR`` sets step ``s``'s rate to ``lr_at(s, ...)``
    (call ``scheduler.step()`` after each ``optimizer.step()``)."""
    if optimizer_lr <= 0:
        raise ValueError(f"optimizer_lr must be positive, got {optimizer_lr}")
    _check(lr, min_lr, warmup_steps, max_steps, decay_fraction)

    def multiplier(step: int) -> float:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                     max_steps=max_steps, schedule=schedule, decay_fraction=decay_fraction,
                     decay_shape=decay_shape) / optimizer_lr

    return multiplier
