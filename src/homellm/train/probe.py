"""Long-context proofs for ``homellm train``'s eval: a needle-in-a-haystack probe on held-out
Russian text, and next-token loss by position.

The needle probe scores a multiple choice instead of free generation, so a small model trained
from scratch gets a graded score with a known chance level: the context is held-out text with
``Секретный код: 4817.`` inserted at a depth, ending with the question `` Секретный код:``;
each of ``candidates`` four-digit values is scored by the model's summed log-probability of its
continuation `` 4817.``, and a trial is correct when the true value scores strictly highest.
Chance is ``1 / candidates``.

Every random choice comes from a local ``random.Random`` seeded per (seed, length, depth,
trial): the training loop's RNG state is never touched, and a cell's result does not depend on
the rest of the grid.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from homellm.train.metrics import bucket_positions, loss_by_position

if TYPE_CHECKING:
    from tokenizers import Tokenizer

NEEDLE_KEY = "Секретный код:"
MIN_LENGTH = 32
MIN_HAYSTACK = 8
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_GRID_LENGTHS = 5
FIRST_GRID_LENGTH = 256
BOUNDARY_WINDOW = 24       # tokens either side of the target depth searched for a boundary
POSITION_CHUNK = 1024      # positions per LM-head call in position_losses
_SENTENCE_END = (".", "!", "?", "…", "\n")


@dataclass(frozen=True)
class NeedleResult:
    """One (length, depth) cell: ``accuracy`` over ``trials``, ``chance`` = 1 / candidates,
    ``mean_margin`` = mean (true log-prob - best distractor log-prob) in nats, and
    ``repeated`` when the held-out text was shorter than the haystack and had to repeat."""

    length: int
    depth: float
    accuracy: float
    trials: int
    chance: float
    mean_margin: float
    repeated: bool


@dataclass(frozen=True)
class _Trial:
    context: list[int]
    candidates: list[list[int]]     # the true value's continuation first
    needle_at: int                  # token index where the needle sentence starts
    repeated: bool


class _TokenStream:
    """The held-out texts as one cyclic token stream, each text encoded on first use."""

    def __init__(self, tokenizer: Tokenizer, texts: list[str]) -> None:
        self._tokenizer = tokenizer
        self._texts = [t.strip() + "\n\n" for t in texts if t.strip()]
        if not self._texts:
            raise ValueError("needle probe: no held-out text to build a haystack from")
        self._ids: dict[int, list[int]] = {}

    def ids(self, index: int) -> list[int]:
        if index not in self._ids:
            self._ids[index] = self._tokenizer.encode(self._texts[index]).ids
        return self._ids[index]

    def take(self, rng: random.Random, n: int) -> tuple[list[int], bool]:
        """``n`` tokens from a random text and token offset, and whether any repeat."""
        start = rng.randrange(len(self._texts))
        offset = rng.randrange(len(self.ids(start)))
        out: list[int] = []
        index, pos, wrapped = start, offset, False
        while len(out) < n:
            out.extend(self.ids(index)[pos:pos + n - len(out)])
            index, pos = (index + 1) % len(self._texts), 0
            wrapped = wrapped or index == start
        # once wrapped, every text is encoded, so the total is known
        total = sum(len(ids) for ids in self._ids.values()) if wrapped else n
        return out, n > total


def needle_probe(model: torch.nn.Module, tokenizer: Tokenizer, haystack_texts: list[str],
                 lengths: list[int], depths: list[float], *, trials: int = 8,
                 candidates: int = 10, seed: int = 0,
                 device: str | torch.device = "cpu") -> list[NeedleResult]:
    """A NeedleResult per (length, depth), lengths outer; ``length`` counts the context's
    tokens (haystack, needle sentence and question), the scored value comes after it."""
    if trials < 1:
        raise ValueError(f"needle probe: trials must be 1 or more, got {trials}")
    if not 2 <= candidates <= 9000:
        raise ValueError(f"needle probe: candidates must be 2 to 9000 four-digit values, "
                         f"got {candidates}")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle probe: depth must be in [0, 1], got {depth}")
    for length in lengths:
        if length < MIN_LENGTH:
            raise ValueError(f"needle probe: length {length} is too short for a haystack; "
                             f"use {MIN_LENGTH} tokens or more")
    stream = _TokenStream(tokenizer, haystack_texts)
    results = []
    with _eval_mode(model):
        for length in lengths:
            for depth in depths:
                correct, margins, repeated = 0, [], False
                for trial in range(trials):
                    rng = random.Random(f"needle:{seed}:{length}:{depth!r}:{trial}")
                    made = _make_trial(stream, tokenizer, length, depth, candidates, rng)
                    scores = _score_candidates(model, made.context, made.candidates, device)
                    margin = float(scores[0] - scores[1:].max())
                    correct += margin > 0
                    margins.append(margin)
                    repeated = repeated or made.repeated
                results.append(NeedleResult(
                    length=length, depth=depth, accuracy=correct / trials, trials=trials,
                    chance=1.0 / candidates, mean_margin=sum(margins) / trials,
                    repeated=repeated))
    return results


def _make_trial(stream: _TokenStream, tokenizer: Tokenizer, length: int, depth: float,
                candidates: int, rng: random.Random) -> _Trial:
    values = rng.sample(range(1000, 10000), candidates)
    needle = tokenizer.encode(f" {NEEDLE_KEY} {values[0]}.").ids
    question = tokenizer.encode(f" {NEEDLE_KEY}").ids
    room = length - len(needle) - len(question)
    if room < MIN_HAYSTACK:
        raise ValueError(f"needle probe: length {length} leaves {room} haystack tokens after "
                         f"the needle ({len(needle)}) and question ({len(question)}); "
                         f"need {MIN_HAYSTACK} or more")
    hay, repeated = stream.take(rng, room)
    at = _boundary(tokenizer, hay, round(depth * room))
    context = hay[:at] + needle + hay[at:] + question
    answers = [tokenizer.encode(f" {value}.").ids for value in values]
    return _Trial(context=context, candidates=answers, needle_at=at, repeated=repeated)


def _boundary(tokenizer: Tokenizer, ids: list[int], target: int) -> int:
    """The index nearest ``target`` to insert before: a sentence end first, else a space."""
    def text(i: int) -> str:
        return tokenizer.decode([ids[i]])

    def starts_word(i: int) -> bool:
        return i in (0, len(ids)) or text(i)[:1].isspace()

    def ends_sentence(i: int) -> bool:
        return i in (0, len(ids)) or (starts_word(i) and text(i - 1).endswith(_SENTENCE_END))

    order = sorted(range(max(0, target - BOUNDARY_WINDOW),
                         min(len(ids), target + BOUNDARY_WINDOW) + 1),
                   key=lambda i: (abs(i - target), i))
    for good in (ends_sentence, starts_word):
        for i in order:
            if good(i):
                return i
    return target


def _score_candidates(model: torch.nn.Module, context: list[int], candidates: list[list[int]],
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """Summed log-prob (float64, on CPU) of each candidate continuation after ``context``,
    all candidates as one right-padded batch: with a causal mask the padding after a
    candidate cannot change its scores, so no attention mask is needed."""
    if not context or any(not c for c in candidates):
        raise ValueError("needle probe: empty context or candidate")
    width = max(len(c) for c in candidates)
    rows = [context + c + [c[-1]] * (width - len(c)) for c in candidates]
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    # only the positions that predict a candidate token are sent through the LM head
    first = len(context) - 1
    targets = ids[:, first + 1:]
    with torch.no_grad():
        logits = _logits_at(model, ids, first, ids.shape[1] - 1)
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lens = torch.tensor([len(c) for c in candidates], device=picked.device)
    keep = torch.arange(width, device=picked.device)[None, :] < lens[:, None]
    return (picked.double() * keep).sum(dim=1).cpu()


def _logits_at(model: torch.nn.Module, ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Logits at positions ``[start, stop)`` of ``ids`` (B, T): through the decoder and the
    output embedding (tied or not, it is the same module) when the model exposes them, so a
    long context does not materialise (B, T, vocab) logits."""
    decoder, head = _decoder_and_head(model)
    if decoder is None or head is None:
        return model(input_ids=ids, use_cache=False).logits[:, start:stop]
    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    return head(hidden[:, start:stop])


def _decoder_and_head(model: torch.nn.Module) -> tuple[Any, Any]:
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return None, None   # the head alone would skip the capping forward() applies
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None, None
    return get_decoder(), get_head()


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() and torch.no_grad() inside, the previous train/eval mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def position_losses(model: torch.nn.Module, token_windows: torch.Tensor, *, bucket: int,
                    mask: torch.Tensor | None = None,
                    device: str | torch.device = "cpu") -> list[float]:
    """Mean next-token loss (nats) at each position over the windows (B, T+1): inputs
    ``[:, :-1]``, targets ``[:, 1:]``, ``mask`` (B, T) choosing the counted targets; averaged
    over buckets of ``bucket`` positions (NaN where a bucket has no counted target). One
    window at a time and the LM head over chunks of positions keep the memory bounded."""
    if token_windows.dim() != 2 or token_windows.shape[1] < 2:
        raise ValueError(f"expected token windows (B, T+1) with T >= 1, "
                         f"got {tuple(token_windows.shape)}")
    batch, width = token_windows.shape[0], token_windows.shape[1] - 1
    if mask is not None and tuple(mask.shape) != (batch, width):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the targets "
                         f"{(batch, width)}")
    nll = torch.empty(batch, width, dtype=torch.float32)
    with _eval_mode(model):
        for b in range(batch):
            window = token_windows[b].to(device=device, dtype=torch.long)
            nll[b] = _window_nll(model, window[:-1], window[1:])
    by_position = loss_by_position(nll, None if mask is None else mask.cpu())
    return [float(x) for x in bucket_positions(by_position, bucket)]


def _window_nll(model: torch.nn.Module, inputs: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
    decoder, head = _decoder_and_head(model)
    if decoder is None or head is None:
        logits = model(input_ids=inputs[None], use_cache=False).logits[0]
        return F.cross_entropy(logits.float(), targets, reduction="none").cpu()
    hidden = decoder(input_ids=inputs[None], use_cache=False).last_hidden_state[0]
    parts = []
    for lo in range(0, inputs.shape[0], POSITION_CHUNK):
        logits = head(hidden[lo:lo + POSITION_CHUNK]).float()
        parts.append(F.cross_entropy(logits, targets[lo:lo + POSITION_CHUNK],
                                     reduction="none").cpu())
    return torch.cat(parts)


def default_grid(max_len: int) -> tuple[list[int], list[float]]:
    """Needle lengths doubling from 256 to the trained context ``max_len`` (always included),
    at most five spread evenly in log scale, and depths 0, 0.25, 0.5, 0.75 and 1."""
    if max_len < MIN_LENGTH:
        raise ValueError(f"needle probe: max_len {max_len} is below {MIN_LENGTH} tokens")
    doubling = []
    length = FIRST_GRID_LENGTH
    while length < max_len:
        doubling.append(length)
        length *= 2
    doubling.append(max_len)
    if len(doubling) > MAX_GRID_LENGTHS:
        last = len(doubling) - 1
        picks = {round(i * last / (MAX_GRID_LENGTHS - 1)) for i in range(MAX_GRID_LENGTHS)}
        doubling = [doubling[i] for i in sorted(picks)]
    return doubling, list(DEPTHS)
