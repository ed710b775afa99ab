"""Evaluation metrics: hand-computed loss, perplexity, bits per byte and per character."""

from __future__ import annotations

import math

import pytest
import torch

from homellm.train.metrics import (
    bucket_positions,
    eval_metrics,
    loss_by_position,
    mfu,
    text_counts,
)


def test_eval_metrics_hand_computed() -> None:
    # 100 tokens at ln 2 nats each: loss ln 2, ppl 2, 100 bits in all;
    # 400 bytes -> 0.25 bpb, 200 chars -> 0.5 bpc
    m = eval_metrics(100 * math.log(2), 100, 400, 200)
    assert m["loss"] == pytest.approx(math.log(2))
    assert m["ppl"] == pytest.approx(2.0)
    assert m["bpb"] == pytest.approx(0.25)
    assert m["bpc"] == pytest.approx(0.5)
    assert m["bytes_per_token"] == 4.0 and m["chars_per_token"] == 2.0


def test_russian_bpc_is_about_twice_bpb() -> None:
    text = "Привет, мир! Съешь же ещё этих мягких французских булок."
    n_bytes, n_chars = text_counts(text)
    # 45 Cyrillic letters at 2 bytes, 11 ASCII spaces/punctuation at 1: 101 bytes, 56 chars
    assert (n_bytes, n_chars) == (101, 56)
    # 20 tokens at 3 nats: 60 nats = 60 / ln 2 = 86.56 bits; / 101 = 0.857; / 56 = 1.546
    m = eval_metrics(60.0, 20, n_bytes, n_chars)
    assert m["bpb"] == pytest.approx(60 / math.log(2) / 101)
    assert m["bpc"] == pytest.approx(60 / math.log(2) / 56)
    assert m["bpc"] / m["bpb"] == pytest.approx(101 / 56)        # ~1.8 with ASCII mixed in
    assert m["ppl"] == pytest.approx(math.exp(3.0))


def test_eval_metrics_edges() -> None:
    assert eval_metrics(0.0, 1, 1, 1)["ppl"] == 1.0
    assert eval_metrics(1e6, 1, 1, 1)["ppl"] == math.inf
    for bad in [(1.0, 0, 1, 1), (1.0, 1, 0, 1), (1.0, 1, 1, 0), (1.0, 1, 1, 2),
                (-1.0, 1, 1, 1), (math.nan, 1, 1, 1)]:
        with pytest.raises(ValueError):
            eval_metrics(*bad)


def test_mfu() -> None:
    # 41.7K tok/s x 6 x 1.88e9 FLOPs/token = 4.70e14; / 989e12 (H100 bf16 dense) = 0.4756
    assert mfu(41_700, 6 * 1.88e9, 989e12) == pytest.approx(41_700 * 6 * 1.88e9 / 989e12)
    assert mfu(1000, 1e9, 2e12) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1000, 1e9, 0)


def test_loss_by_position() -> None:
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0],
                        [3.0, 4.0, 5.0, 6.0]])
    assert loss_by_position(nll).tolist() == [2.0, 3.0, 4.0, 5.0]
    mask = torch.tensor([[1, 1, 0, 0],
                         [1, 0, 1, 0]], dtype=torch.bool)
    # position 0: (1 + 3) / 2; 1: 2 / 1; 2: 5 / 1; 3: nothing counted -> NaN
    got = loss_by_position(nll, mask)
    assert got[:3].tolist() == [2.0, 2.0, 5.0]
    assert math.isnan(got[3])
    with pytest.raises(ValueError):
        loss_by_position(nll[0])
    with pytest.raises(ValueError):
        loss_by_position(nll, mask[:, :2])


def test_bucket_positions() -> None:
    by_pos = torch.tensor([1.0, 3.0, 5.0, math.nan, 7.0])
    # buckets of 2: (1 + 3) / 2, 5 (NaN ignored), 7
    assert bucket_positions(by_pos, 2).tolist() == [2.0, 5.0, 7.0]
    with pytest.raises(ValueError):
        bucket_positions(by_pos, 0)
