"""Needle-in-a-haystack probe and loss by position on a real tiny tokenizer and model."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from homellm.tokenizer import load_tokenizer, train_tokenizer
from homellm.train.presets import build_model, preset_config
from homellm.train.probe import (
    NEEDLE_KEY,
    NeedleResult,
    _make_trial,
    _score_candidates,
    _TokenStream,
    default_grid,
    needle_probe,
    position_losses,
)

_RU = ("привет мир как дела сегодня хорошая погода книга читать дом улица ёлка человек "
       "время жизнь говорить знать рука день глаз работа слово место город река лес "
       "секретный код ответ вопрос число")
_WORDS = _RU.split()


def _russian_texts(seed: int, count: int, sentences: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(sentences):
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10)))
            parts.append(text[0].upper() + text[1:] + rng.choice([".", "!", "?"]))
        texts.append(" ".join(parts))
    return texts


HELD_OUT = _russian_texts(1, 3, 12)     # a few hundred tokens: long haystacks must repeat


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    texts = [*_russian_texts(0, 40, 8), "Секретный код: 1234. 5678. 90"]
    return load_tokenizer(train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tok",
                                          vocab_size=500))


def _tiny(tokenizer: Any, tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(preset_config("tiny", tokenizer.get_vocab_size(), tie=tie))


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> torch.nn.Module:
    return _tiny(tokenizer)


class InductionOracle(torch.nn.Module):
    """A causal LM that only copies: it predicts whatever followed the earlier position whose
    preceding tokens match the longest suffix of its input so far (the latest on a tie). It
    can know the needle only from the context, so the probe must score it at 100% when the
    needle is inserted and scored correctly."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        x = input_ids
        batch, length = x.shape
        eq = (x[:, :, None] == x[:, None, :]).long()                  # (B, t, s)
        run = torch.zeros_like(eq)        # run[b, t, s]: equal tokens ending at t and at s
        for t in range(length):
            before = torch.zeros_like(eq[:, t])
            if t:
                before[:, 1:] = run[:, t - 1, :-1]
            run[:, t] = eq[:, t] * (1 + before)
        earlier = torch.ones(length, length, dtype=torch.bool).tril(-1)
        earlier[:, length - 1] = False                                # s + 1 must exist
        s = torch.arange(length).expand(batch, length, length)
        rank = torch.where(earlier & (run > 0), run * length + s, -1)
        best = rank.max(dim=-1)
        found = best.values >= 0
        nxt = torch.gather(x, 1, (best.indices + 1).clamp(max=length - 1))
        logits = torch.zeros(batch, length, self.vocab)
        logits[found] = F.one_hot(nxt[found], self.vocab).float() * 30.0
        return SimpleNamespace(logits=logits)


def test_results_cover_the_grid_in_order(model: torch.nn.Module, tokenizer: Any) -> None:
    lengths, depths = [64, 96], [0.0, 0.5, 1.0]
    results = needle_probe(model, tokenizer, HELD_OUT, lengths, depths, trials=2,
                           candidates=5)
    assert [(r.length, r.depth) for r in results] == [(n, d) for n in lengths for d in depths]
    for r in results:
        assert isinstance(r, NeedleResult)
        assert 0.0 <= r.accuracy <= 1.0 and r.trials == 2
        assert r.accuracy * r.trials == pytest.approx(round(r.accuracy * r.trials))
        assert r.chance == pytest.approx(1 / 5)
        assert math.isfinite(r.mean_margin)
        assert not r.repeated


def test_trial_context_has_length_needle_and_question(tokenizer: Any) -> None:
    stream = _TokenStream(tokenizer, HELD_OUT)
    for depth in (0.0, 0.5, 1.0):
        trial = _make_trial(stream, tokenizer, 80, depth, 4, random.Random(depth))
        assert len(trial.context) == 80
        text = tokenizer.decode(trial.context)
        answer = tokenizer.decode(trial.candidates[0])
        value = answer.strip().rstrip(".")
        assert len(value) == 4 and value.isdigit()
        assert f"{NEEDLE_KEY} {value}." in text
        assert text.endswith(f" {NEEDLE_KEY}")
        assert text.count(NEEDLE_KEY) == 2
        assert len({tokenizer.decode(c) for c in trial.candidates}) == 4
        room = 80 - len(tokenizer.encode(f" {NEEDLE_KEY} {value}.").ids) \
            - len(tokenizer.encode(f" {NEEDLE_KEY}").ids)
        assert abs(trial.needle_at - depth * room) <= 24


def test_same_seed_same_results_and_seed_matters(model: torch.nn.Module,
                                                 tokenizer: Any) -> None:
    def run(seed: int) -> list[NeedleResult]:
        return needle_probe(model, tokenizer, HELD_OUT, [64], [0.25, 0.75], trials=3,
                            candidates=4, seed=seed)

    first = run(7)
    assert run(7) == first
    assert [r.mean_margin for r in run(8)] != [r.mean_margin for r in first]


def test_global_rng_and_train_mode_untouched(model: torch.nn.Module, tokenizer: Any) -> None:
    random.seed(123)
    torch.manual_seed(123)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    model.train()
    needle_probe(model, tokenizer, HELD_OUT, [64], [0.5], trials=2, candidates=3)
    position_losses(model, torch.randint(0, 100, (1, 9), generator=torch.Generator()),
                    bucket=2)
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert model.training
    model.eval()
    needle_probe(model, tokenizer, HELD_OUT, [64], [0.5], trials=1, candidates=3)
    assert not model.training


def test_long_haystack_repeats_the_held_out_text(model: torch.nn.Module,
                                                 tokenizer: Any) -> None:
    total = sum(len(tokenizer.encode(t.strip() + "\n\n").ids) for t in HELD_OUT)
    assert total < 600
    short, long = needle_probe(model, tokenizer, HELD_OUT, [64, 640], [0.5], trials=1,
                               candidates=3)
    assert not short.repeated and long.repeated


def test_bad_arguments_are_refused(model: torch.nn.Module, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="too short"):
        needle_probe(model, tokenizer, HELD_OUT, [16], [0.5])
    with pytest.raises(ValueError, match="depth"):
        needle_probe(model, tokenizer, HELD_OUT, [64], [1.5])
    with pytest.raises(ValueError, match="no held-out text"):
        needle_probe(model, tokenizer, ["  "], [64], [0.5])


def test_scores_match_a_plain_forward_of_each_sequence(tokenizer: Any) -> None:
    for tie in (True, False):
        model = _tiny(tokenizer, tie=tie).eval()
        context = tokenizer.encode(HELD_OUT[0]).ids[:40]
        candidates = [tokenizer.encode(" 4817.").ids, tokenizer.encode(" 12.").ids,
                      tokenizer.encode(" дом").ids]
        assert len({len(c) for c in candidates}) > 1      # the right padding is exercised
        scores = _score_candidates(model, context, candidates)
        for cand, score in zip(candidates, scores, strict=True):
            ids = torch.tensor([context + cand])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            expected = sum(float(logp[len(context) - 1 + i, tok]) for i, tok in enumerate(cand))
            assert float(score) == pytest.approx(expected, abs=1e-4)


def test_a_model_that_reads_the_context_finds_every_needle(tokenizer: Any) -> None:
    oracle = InductionOracle(tokenizer.get_vocab_size())
    results = needle_probe(oracle, tokenizer, HELD_OUT, [64, 160], [0.0, 0.5, 1.0],
                           trials=3, candidates=10)
    for r in results:
        assert r.accuracy == 1.0, r
        assert r.mean_margin > 10.0, r
        assert r.chance == pytest.approx(0.1)


def test_position_losses_match_a_plain_forward(model: torch.nn.Module) -> None:
    windows = torch.randint(0, 400, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits.float()
    nll = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # (2, 12)
    per_pos = nll.mean(dim=0)
    expected = [float(per_pos[i:i + 5].mean()) for i in range(0, 12, 5)]
    got = position_losses(model, windows, bucket=5)
    assert got == pytest.approx(expected, abs=1e-4)
    assert len(got) == 3

    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :6] = False
    mask[:, 10:] = False
    masked = (nll * mask).sum(0) / mask.sum(0).clamp(min=1)
    got = position_losses(model, windows, bucket=5, mask=mask)
    assert got[0] == pytest.approx(float(masked[:5].mean()), abs=1e-4)
    assert got[0] == pytest.approx(float(nll[1, :5].mean()), abs=1e-4)
    assert got[1] == pytest.approx(float(masked[5:10].mean()), abs=1e-4)
    assert math.isnan(got[2])
    with pytest.raises(ValueError, match="mask"):
        position_losses(model, windows, bucket=5, mask=mask[:, :5])


def test_default_grid() -> None:
    assert default_grid(2048) == ([256, 512, 1024, 2048], [0.0, 0.25, 0.5, 0.75, 1.0])
    assert default_grid(4096)[0] == [256, 512, 1024, 2048, 4096]
    lengths, _ = default_grid(131072)
    assert len(lengths) == 5 and lengths[0] == 256 and lengths[-1] == 131072
    assert lengths == sorted(set(lengths))
    assert default_grid(3000)[0] == [256, 512, 1024, 2048, 3000]
    assert default_grid(128)[0] == [128]
    with pytest.raises(ValueError):
        default_grid(16)

