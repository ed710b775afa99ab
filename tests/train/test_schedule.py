"""Learning-rate schedule: hand-computed values, boundaries, monotonicity, LambdaLR."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from homellm.train.schedule import lambda_for, lr_at

COS = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10, "max_steps": 110}
WSD = {"lr": 1.0, "min_lr": 0.0, "warmup_steps": 10, "max_steps": 100,
       "schedule": "wsd", "decay_fraction": 0.2}


def test_warmup_values() -> None:
    # lr * (step + 1) / warmup: step 0 -> 1/10, step 4 -> 5/10, step 9 -> 10/10
    assert lr_at(0, **COS) == pytest.approx(0.1)
    assert lr_at(4, **COS) == pytest.approx(0.5)
    assert lr_at(9, **COS) == pytest.approx(1.0)


def test_cosine_values() -> None:
    # progress = (step - 10) / (110 - 10); lr = 0.1 + 0.5 * (1 + cos(pi * p)) * 0.9
    assert lr_at(10, **COS) == pytest.approx(1.0)                       # p = 0
    assert lr_at(35, **COS) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))  # p = 1/4
    assert lr_at(60, **COS) == pytest.approx(0.55)                      # p = 1/2: 0.1 + 0.45
    assert lr_at(85, **COS) == pytest.approx(0.1 + 0.45 * (1 - math.sqrt(0.5)))  # p = 3/4
    assert lr_at(109, **COS) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.99)))
    assert lr_at(110, **COS) == 0.1                                     # p = 1: min_lr
    assert lr_at(10_000, **COS) == 0.1


def test_wsd_values() -> None:
    # decay over the last round(0.2 * 100) = 20 steps, from step 80; lr = 1 - sqrt(p)
    assert lr_at(10, **WSD) == 1.0
    assert lr_at(79, **WSD) == 1.0
    assert lr_at(80, **WSD) == pytest.approx(1.0)             # p = 0
    assert lr_at(85, **WSD) == pytest.approx(0.5)             # p = 5/20 = 1/4: 1 - 1/2
    assert lr_at(96, **WSD) == pytest.approx(1 - math.sqrt(0.8))  # p = 16/20
    assert lr_at(100, **WSD) == 0.0
    # linear: p = 1/4 -> 0.75; with min_lr 0.2: 0.2 + 0.75 * 0.8 = 0.8
    assert lr_at(85, **WSD, decay_shape="linear") == pytest.approx(0.75)
    assert lr_at(85, **{**WSD, "min_lr": 0.2}, decay_shape="linear") == pytest.approx(0.8)


def test_no_warmup_and_warmup_equal_to_max_steps() -> None:
    assert lr_at(0, **{**COS, "warmup_steps": 0}) == pytest.approx(1.0)
    # warmup_steps == max_steps (the run config allows it): warmup only, then min_lr
    short = {**COS, "warmup_steps": 4, "max_steps": 4}
    assert [lr_at(s, **short) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.1])


def test_wsd_warmup_overlapping_the_decay_takes_the_lower() -> None:
    # max 10, decay 2 steps from step 8, warmup 10: step 8 warm 0.9 vs decay 1.0 -> 0.9;
    # step 9: warm 1.0 vs 1 - sqrt(1/2) -> 0.2929
    args = {**WSD, "warmup_steps": 10, "max_steps": 10}
    assert lr_at(8, **args) == pytest.approx(0.9)
    assert lr_at(9, **args) == pytest.approx(1 - math.sqrt(0.5))


@pytest.mark.parametrize("args", [COS, WSD, {**WSD, "decay_shape": "linear"}])
def test_monotonic(args: dict) -> None:
    values = [lr_at(s, **args) for s in range(args["max_steps"] + 5)]
    warm = args["warmup_steps"]
    assert all(a < b for a, b in itertools.pairwise(values[:warm]))
    after = values[warm - 1:]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert max(values) == pytest.approx(args["lr"])
    assert min(values) == args["min_lr"]


@pytest.mark.parametrize("bad", [
    {"max_steps": 0}, {"warmup_steps": 200}, {"warmup_steps": -1}, {"lr": 0.0},
    {"min_lr": -1.0}, {"decay_fraction": 0.0}, {"schedule": "step"},
])
def test_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        lr_at(50, **{**COS, **bad})
    with pytest.raises(ValueError):
        lr_at(-1, **COS)


def test_lambda_lr_follows_lr_at() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda_for(0.5, **{**WSD, "lr": 0.5}))
    seen = []
    for _ in range(102):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **{**WSD, "lr": 0.5}) for s in range(102)])
    # a multiplier relative to another base rate: 1e-3 * (lr_at / 1e-3)
    assert lambda_for(1e-3, **COS)(60) == pytest.approx(0.55 / 1e-3)
