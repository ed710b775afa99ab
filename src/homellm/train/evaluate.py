"""Evaluation during and after training: loss, perplexity, bits per byte and per character on
a split, the loss by token position, and greedy sample generations.

Bytes and characters are counted per target token from the tokenizer's byte-level vocabulary:
a token's bytes are its byte-level symbols mapped back, and its characters are its UTF-8 lead
bytes (every byte not of the form 10xxxxxx), so the sums over a text equal the decoded text's
bytes and characters even where a Cyrillic letter is split across two tokens. Special tokens
count neither bytes nor characters and are left out of every figure, as nanochat's
``evaluate_bpb`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from tokenizers import Tokenizer

from homellm.data.reader import ShardSet, WindowLoader
from homellm.train.distributed import Dist, all_sum
from homellm.train.lm import step_batch, token_nll
from homellm.train.loss import IGNORE_INDEX
from homellm.train.metrics import bucket_positions, eval_metrics


@lru_cache(maxsize=1)
def _byte_of_symbol() -> dict[str, int]:
    """GPT-2's byte-level alphabet (``bytes_to_unicode``) inverted: symbol → byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


@dataclass(frozen=True)
class TokenTable:
    """Per token id: UTF-8 bytes, characters, and whether it is a special token."""

    n_bytes: np.ndarray
    n_chars: np.ndarray
    special: np.ndarray

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, size: int) -> TokenTable:
        symbols = _byte_of_symbol()
        n_bytes = np.zeros(size, dtype=np.int64)
        n_chars = np.zeros(size, dtype=np.int64)
        special = np.zeros(size, dtype=np.bool_)
        added = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        for token, index in tokenizer.get_vocab(with_added_tokens=True).items():
            if index >= size:
                continue
            if token in added or any(ch not in symbols for ch in token):
                special[index] = True
                continue
            raw = bytes(symbols[ch] for ch in token)
            n_bytes[index] = len(raw)
            n_chars[index] = sum(1 for b in raw if b & 0xC0 != 0x80)
        return cls(n_bytes, n_chars, special)


@dataclass
class EvalResult:
    metrics: dict[str, float]          # loss, ppl, bpb, bpc, bytes_per_token, chars_per_token
    tokens: int
    by_position: list[float]           # mean loss per position bucket
    bucket: int


def eval_windows(shards: ShardSet, seq_len: int, eval_tokens: int, micro_batch: int) -> int:
    """How many windows an eval reads: ``eval_tokens`` worth, at least one batch, at most all."""
    available = max(0, (len(shards) - 1) // seq_len)
    wanted = max(micro_batch, math.ceil(eval_tokens / seq_len))
    return min(available, wanted)


def evaluate(model: torch.nn.Module, shards: ShardSet, table: TokenTable, ctx: Dist, *,
             seq_len: int, micro_batch: int, eval_tokens: int, document_masking: bool,
             use_loss_mask: bool, precision: str) -> EvalResult | None:
    """The split's metrics over its first windows in order (the same text at every eval).
    ``model`` is the LossModel or its DDP/FSDP2 wrapping. Ranks take alternate batches and
    sum; every rank runs the same number of forwards (FSDP2 gathers layers collectively), a
    rank without a batch of its own running one with zero weight. None when the split is too
    short for one window."""
    n_windows = eval_windows(shards, seq_len, eval_tokens, micro_batch)
    if n_windows < 1:
        return None
    batch_size = min(micro_batch, n_windows)
    loader = WindowLoader(shards, seq_len, batch_size, shuffle=False)
    n_batches = n_windows // batch_size
    rounds = math.ceil(n_batches / ctx.world_size)
    was_training = model.training
    model.eval()
    device = ctx.device
    special = torch.from_numpy(table.special).to(device)
    n_bytes = torch.from_numpy(table.n_bytes).to(device)
    n_chars = torch.from_numpy(table.n_chars).to(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)   # nll, tokens, bytes, chars
    pos_sum = torch.zeros(seq_len, dtype=torch.float64, device=device)
    pos_count = torch.zeros(seq_len, dtype=torch.float64, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    try:
        batches = [loader.next_batch() for _ in range(n_batches)]
        for turn in range(rounds):
            index = turn * ctx.world_size + ctx.rank
            step = step_batch(batches[index % n_batches], device,
                              document_masking=document_masking, use_loss_mask=use_loss_mask)
            with autocast:
                nll = token_nll(model, step)
            targets = step.targets
            valid = (targets != IGNORE_INDEX) & (index < n_batches)
            safe = targets.clamp(min=0)
            counted = valid & ~special[safe]
            weights = counted.to(torch.float64)
            sums += torch.stack([(nll.double() * weights).sum(), weights.sum(),
                                 (n_bytes[safe] * counted).sum().double(),
                                 (n_chars[safe] * counted).sum().double()])
            pos_sum += (nll.double() * weights).sum(dim=0)
            pos_count += weights.sum(dim=0)
    finally:
        model.train(was_training)
    sums, pos_sum, pos_count = (all_sum(t, ctx) for t in (sums, pos_sum, pos_count))
    nll_sum, tokens, n_b, n_c = (float(v) for v in sums.tolist())
    if tokens < 1 or n_b < 1:
        return None
    metrics = eval_metrics(nll_sum, int(tokens), int(n_b), int(max(n_c, 1)))
    by_position = torch.where(pos_count > 0, pos_sum / pos_count.clamp(min=1), torch.nan)
    bucket = max(1, seq_len // 64)
    buckets = bucket_positions(by_position, bucket)
    return EvalResult(metrics, int(tokens), [float(v) for v in buckets.tolist()], bucket)


def greedy_samples(lm: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str],
                   max_new_tokens: int, device: torch.device, stop_ids: list[int]) -> list[str]:
    """Greedy continuations (no sampling, so no random state is drawn and resume stays exact)."""
    was_training = lm.training
    lm.eval()
    out = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = tokenizer.encode(prompt).ids or [stop_ids[-1]]
                x = torch.tensor([ids], device=device)
                generated = lm.generate(x, attention_mask=torch.ones_like(x),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        eos_token_id=stop_ids, pad_token_id=stop_ids[-1],
                                        use_cache=True)
                out.append(tokenizer.decode(generated[0, len(ids):].tolist()))
    finally:
        lm.train(was_training)
    return out
