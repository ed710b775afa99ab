"""Prompts for a benchmark: synthetic ones of given lengths, a JSONL/ShareGPT file, or windows of
the user's own text corpus (any language, UTF-8).

Lengths are tokens when a tokenizer is given (Hugging Face ``tokenizers`` JSON, or a model folder);
without one they are counted in whitespace-separated words and the workload says so, because a
word is not a token (one Russian word is often 2-4 tokens).

Same seed, same spec and same tokenizer → the same prompts, in the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from homellm.errors import ConfigError

Source = Literal["random", "file", "corpus"]
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 128
#: the corpus is read up to this many characters: enough text for any window, bounded time
CORPUS_MAX_CHARS = 8_000_000
_WORD = re.compile(r"\S+")


class TextTokenizer:
    """A Hugging Face fast tokenizer, without special tokens (they belong to the server's
    template, not to the prompt text)."""

    def __init__(self, backend: Any, name: str) -> None:
        self.backend, self.name = backend, name
        specials = backend.get_added_tokens_decoder() if hasattr(
            backend, "get_added_tokens_decoder") else {}
        self.special_ids = {i for i, tok in specials.items() if getattr(tok, "special", True)}
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of every token of ``text``."""
        return self.backend.encode(text, add_special_tokens=False).offsets

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """``tokenizer.json``, or a model folder holding one (else whatever transformers can load)."""
    from tokenizers import Tokenizer

    p = Path(path).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    try:
        if file.is_file():
            return TextTokenizer(Tokenizer.from_file(str(file)), str(p))
        if p.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(p))
            if getattr(tok, "backend_tokenizer", None) is None:
                raise ConfigError(f"--tokenizer {p}: no fast tokenizer in this folder")
            return TextTokenizer(tok.backend_tokenizer, str(p))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--tokenizer {p}: cannot load ({type(exc).__name__}: {exc})") from exc
    raise ConfigError(f"--tokenizer {p}: no such file or folder")


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    prompt_tokens: int  # tokens, or words when the workload has no tokenizer
    max_tokens: int


@dataclass(frozen=True)
class WorkloadSpec:
    source: Source = "random"
    path: Path | None = None        # the JSONL/ShareGPT file, or the corpus file/folder
    input_len: int = DEFAULT_INPUT_LEN
    output_len: int | None = None   # None: the file's own lengths, else 128
    range_ratio: float = 0.0        # lengths uniform in [L(1-r), L(1+r)], as vLLM's random
    prefix_len: int = 0             # one shared prefix of this length before every prompt
    num_prompts: int = 1000
    seed: int = 0


@dataclass
class Workload:
    prompts: list[Prompt]
    counted_in: Literal["tokens", "words"]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> Prompt:
        return self.prompts[index % len(self.prompts)]

    def digest(self) -> str:
        """sha256 of the prompts and their lengths, for the bench card."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(f"{p.max_tokens}\0{p.text}\0".encode())
        return h.hexdigest()


def build_workload(spec: WorkloadSpec, tokenizer: TextTokenizer | None = None) -> Workload:
    _check(spec)
    rng = np.random.default_rng(spec.seed)
    if spec.source == "file":
        return _from_file(spec, tokenizer, rng)
    if spec.source == "corpus":
        text = read_corpus(_need_path(spec))
    else:
        text = resources.files("homellm.assets").joinpath("demo_corpus.txt").read_text("utf-8")
    in_lens, out_lens = _lengths(spec, rng)
    notes = [] if tokenizer else [
        "no tokenizer: prompt lengths are counted in words, not tokens (give --tokenizer)"]
    if spec.source == "random" and tokenizer is not None:
        prompts = _random_tokens(spec, tokenizer, rng, in_lens, out_lens)
        return Workload(prompts, "tokens", notes)
    if spec.source == "random":
        notes.append("random prompts are words drawn from a built-in Russian/English vocabulary")
        vocab = sorted(set(_WORD.findall(text)))
        words = [vocab[i] for i in rng.integers(0, len(vocab), size=spec.prefix_len)]
        prefix = " ".join(words) + " " if words else ""
        prompts = []
        for n_in, n_out in zip(in_lens, out_lens, strict=True):
            body = " ".join(vocab[i] for i in rng.integers(0, len(vocab), size=n_in))
            prompts.append(Prompt(prefix + body, spec.prefix_len + n_in, n_out))
        return Workload(prompts, "words", notes)
    return Workload(_windows(spec, text, tokenizer, rng, in_lens, out_lens),
                    "tokens" if tokenizer else "words", notes)


def read_corpus(path: Path) -> str:
    """Every ``.txt``/``.md`` file under ``path`` (or the file itself), sorted, as UTF-8."""
    files = ([path] if path.is_file() else
             sorted(f for f in path.rglob("*") if f.suffix in (".txt", ".md") and f.is_file()))
    if not files:
        raise ConfigError(f"--corpus {path}: no .txt or .md files there")
    parts: list[str] = []
    size = 0
    for f in files:
        try:
            text = f.read_text("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--corpus {f}: not UTF-8 text (byte {exc.start})") from None
        parts.append(text)
        size += len(text)
        if size >= CORPUS_MAX_CHARS:
            break
    text = "\n".join(parts)[:CORPUS_MAX_CHARS]
    if not text.strip():
        raise ConfigError(f"--corpus {path}: the files are empty")
    return text


# --- internals ------------------------------------------------------------------------------


def _check(spec: WorkloadSpec) -> None:
    if not 0.0 <= spec.range_ratio < 1.0:
        raise ConfigError(f"--range-ratio {spec.range_ratio}: must be in [0, 1)")
    if spec.input_len < 1 or (spec.output_len is not None and spec.output_len < 1):
        raise ConfigError("--input-len and --output-len must be at least 1")
    if spec.prefix_len < 0 or spec.num_prompts < 1:
        raise ConfigError("--prefix-len must be >= 0 and the number of prompts >= 1")


def _need_path(spec: WorkloadSpec) -> Path:
    if spec.path is None:
        raise ConfigError(f"workload {spec.source!r} needs a path")
    p = Path(spec.path).expanduser()
    if not p.exists():
        raise ConfigError(f"{p}: no such file or folder")
    return p


def _lengths(spec: WorkloadSpec, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """vLLM's random dataset rule: integers uniform in [floor(L(1-r)), ceil(L(1+r))], output ≥ 1."""
    r, n = spec.range_ratio, spec.num_prompts
    out_len = spec.output_len or DEFAULT_OUTPUT_LEN
    in_lo, in_hi = max(1, math.floor(spec.input_len * (1 - r))), math.ceil(spec.input_len * (1 + r))
    out_lo, out_hi = max(1, math.floor(out_len * (1 - r))), max(1, math.ceil(out_len * (1 + r)))
    ins = rng.integers(in_lo, in_hi + 1, size=n).tolist()
    outs = rng.integers(out_lo, out_hi + 1, size=n).tolist()
    return ins, outs


def _random_tokens(spec: WorkloadSpec, tok: TextTokenizer, rng: np.random.Generator,
                   in_lens: list[int], out_lens: list[int]) -> list[Prompt]:
    """vLLM's construction: consecutive ids from a random offset, decoded, then re-encoded and
    trimmed, because decode→encode does not round-trip to the same count. Ids that decode to a
    broken UTF-8 piece alone are left out: they turn into U+FFFD and swell the count."""
    allowed = np.array([i for i in range(tok.vocab_size)
                        if i not in tok.special_ids and "\ufffd" not in tok.decode([i])])
    prefix = tok.decode(allowed[rng.integers(0, len(allowed), size=spec.prefix_len)].tolist())
    prompts = []
    for i, (n_in, n_out) in enumerate(zip(in_lens, out_lens, strict=True)):
        offset = int(rng.integers(0, len(allowed)))
        ids = allowed[(offset + i + np.arange(n_in)) % len(allowed)].tolist()
        # trimming works on the tail, so the shared prefix stays byte-identical
        text = _fit(tok, prefix + tok.decode(ids), spec.prefix_len + n_in, rng, allowed)
        prompts.append(Prompt(text, tok.count(text), n_out))
    return prompts


def _fit(tok: TextTokenizer, text: str, target: int, rng: np.random.Generator,
         allowed: np.ndarray) -> str:
    for _ in range(10):
        ids = tok.encode(text)
        if len(ids) == target:
            break
        if len(ids) > target:
            text = tok.decode(ids[:target])
        else:
            extra = allowed[rng.integers(0, len(allowed), size=target - len(ids))].tolist()
            text = tok.decode(ids + extra)
    return text


def _windows(spec: WorkloadSpec, text: str, tok: TextTokenizer | None, rng: np.random.Generator,
             in_lens: list[int], out_lens: list[int]) -> list[Prompt]:
    """Random windows of the corpus, cut at token (or word) boundaries so UTF-8 stays whole."""
    spans = tok.spans(text) if tok else [m.span() for m in _WORD.finditer(text)]
    need = spec.prefix_len + max(in_lens)
    if len(spans) < need:
        reps = math.ceil(need / max(1, len(spans))) + 1
        text = "\n".join([text] * reps)
        spans = tok.spans(text) if tok else [m.span() for m in _WORD.finditer(text)]

    def cut(start: int, n: int) -> str:
        return text[spans[start][0]:spans[start + n - 1][1]] if n > 0 else ""

    prefix = cut(int(rng.integers(0, len(spans) - spec.prefix_len + 1)), spec.prefix_len)
    prefix = prefix + "\n" if prefix else ""
    prompts = []
    for n_in, n_out in zip(in_lens, out_lens, strict=True):
        body = cut(int(rng.integers(0, len(spans) - n_in + 1)), n_in)
        full = prefix + body
        count = tok.count(full) if tok else spec.prefix_len + n_in
        prompts.append(Prompt(full, count, n_out))
    return prompts


def _from_file(spec: WorkloadSpec, tok: TextTokenizer | None,
               rng: np.random.Generator) -> Workload:
    path = _need_path(spec)
    pairs = _read_pairs(path)
    if not pairs:
        raise ConfigError(f"{path}: no prompts found (JSONL with \"prompt\", or ShareGPT)")
    count = tok.count if tok else (lambda s: len(_WORD.findall(s)))
    notes = [] if tok else ["no tokenizer: lengths are counted in words, not tokens"]
    order = rng.permutation(len(pairs)).tolist()
    if len(pairs) < spec.num_prompts:
        notes.append(f"{path.name} has {len(pairs)} prompts; they repeat")
    prompts = []
    for k in range(spec.num_prompts):
        text, answer_or_len = pairs[order[k % len(pairs)]]
        if spec.output_len is not None:
            n_out = spec.output_len
        elif isinstance(answer_or_len, int):
            n_out = answer_or_len
        elif isinstance(answer_or_len, str):
            n_out = max(1, count(answer_or_len))
        else:
            n_out = DEFAULT_OUTPUT_LEN
        prompts.append(Prompt(text, count(text), n_out))
    return Workload(prompts, "tokens" if tok else "words", notes)


def _read_pairs(path: Path) -> list[tuple[str, str | int | None]]:
    """(prompt, the reference answer or an output length) from JSONL or a ShareGPT JSON list."""
    raw = path.read_text("utf-8")
    try:
        items = json.loads(raw)
        items = items if isinstance(items, list) else [items]
    except json.JSONDecodeError:
        items = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
    pairs: list[tuple[str, str | int | None]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        conv = item.get("conversations")
        if isinstance(conv, list):  # ShareGPT: the first turn asks, the second answers
            turns = [t.get("value") for t in conv if isinstance(t, dict)]
            if len(turns) >= 2 and isinstance(turns[0], str) and turns[0].strip():
                pairs.append((turns[0], turns[1] if isinstance(turns[1], str) else None))
            continue
        text = item.get("prompt", item.get("text"))
        if isinstance(text, str) and text.strip():
            n = item.get("output_len", item.get("max_tokens"))
            pairs.append((text, int(n) if isinstance(n, int) and n > 0 else None))
    return pairs
