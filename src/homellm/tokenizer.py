"""`homellm tokenizer train`: byte-level BPE for Russian + English as a Hugging Face folder.

Choices:

* NFC normalisation, then the Qwen2 split regex (``pre_tokenizers.Split``) and
  ``ByteLevel(use_regex=False)``. Cyrillic is ``\\p{L}`` in both GPT-2's and Qwen's regex, so
  either keeps Russian words whole; Qwen's lets one leading punctuation mark join a word
  (``«Привет``), splits numbers into single digits (consistent arithmetic for small models) and
  keeps newline runs apart from words.
* Special tokens, in this order from id 0: ``<|endoftext|>`` (ends every document in the
  shards), ``<|im_start|>``, ``<|im_end|>`` (ChatML turns), ``<|pad|>``, then the user's.
* Training sample: the train split cut into units (a conversation; a document, long ones cut
  into ~64 KiB pieces at line breaks); the units with the smallest seeded hash are kept up to
  ``sample_bytes`` of UTF-8. Deterministic for a seed, independent of record order, one pass.
* The folder is written for transformers 4.x and 5.x alike: tokenizer.json, a
  tokenizer_config.json naming ``PreTrainedTokenizerFast`` with ``chat_template`` inside, the
  same template as chat_template.jinja, and special_tokens_map.json.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homellm.data.layout import DatasetLayout
from homellm.data.records import Conversation, Document, Record, from_json
from homellm.errors import HomellmError
from homellm.fsutil import atomic_write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
BASE_SPECIAL_TOKENS = (EOT, IM_START, IM_END, PAD)

# Qwen2's pre-tokenizer regex (tokenizer.json of Qwen/Qwen2.5-*), used as is
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# ChatML as Qwen uses it, without a default system prompt; render_conversation must match it
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_SAMPLE_BYTES = 512 << 20
SAMPLE_UNIT_CHARS = 64 << 10
META_FILE = "homellm-tokenizer.json"
READ_REPORT_BYTES = 1 << 20

Progress = Callable[[str, int, int | None], None]


class TokenizerError(HomellmError):
    """A tokenizer folder is missing, unreadable or lacks a token homellm needs."""


def render_conversation(conv: Conversation) -> str:
    """The conversation as CHATML_TEMPLATE renders it (apply_chat_template(tokenize=False))."""
    return "".join(f"{IM_START}{t.role}\n{t.text}{IM_END}\n" for t in conv.turns)


def record_text(record: Record) -> str:
    """Plain text of a record for training and measuring: a document's text, or the turns'."""
    if isinstance(record, Document):
        return record.text
    return "\n".join(t.text for t in record.turns)


def iter_records(path: Path, read: Callable[[int], None] | None = None) -> Iterator[Record]:
    """The records of a .jsonl split; ``read(bytes so far)`` is called every ~1 MiB and at EOF."""
    done = reported = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            done += len(line)
            if read and done - reported >= READ_REPORT_BYTES:
                read(done)
                reported = done
            if not line.strip():
                continue
            try:
                yield from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                raise TokenizerError(f"{path}:{number}: not a dataset record ({exc})") from None
    if read:
        read(done)


def _units(record: Record) -> Iterator[tuple[str, str]]:
    if isinstance(record, Conversation):
        yield record.id, record_text(record)
        return
    text, start, part = record.text, 0, 0
    while start < len(text):
        end = start + SAMPLE_UNIT_CHARS
        if end < len(text):
            cut = text.rfind("\n", start + SAMPLE_UNIT_CHARS // 2, end)
            end = cut + 1 if cut > 0 else end
        yield f"{record.id}#{part}", text[start:end]
        start, part = end, part + 1


def sample_texts(records: Iterable[Record], sample_bytes: int, seed: int) -> list[str]:
    """The units with the smallest hash of (seed, unit id), up to sample_bytes of UTF-8."""
    heap: list[tuple[int, int, str]] = []  # (-hash, bytes, text): the largest hash on top
    total = 0
    for record in records:
        for unit_id, text in _units(record):
            if not text:
                continue
            digest = hashlib.blake2b(f"{seed}\0{unit_id}".encode(), digest_size=8).digest()
            key = int.from_bytes(digest, "big")
            size = len(text.encode("utf-8"))
            if total + size > sample_bytes and heap and -heap[0][0] < key:
                continue
            heapq.heappush(heap, (-key, size, text))
            total += size
            while total > sample_bytes and len(heap) > 1:
                total -= heapq.heappop(heap)[1]
    heap.sort(reverse=True)  # smallest hash first: the same order for the same sample
    return [text for _, _, text in heap]


def _new_tokenizer() -> Tokenizer:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, processors
    from tokenizers import pre_tokenizers as pre

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre.Sequence([
        pre.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _hf_files(tokenizer: Tokenizer, specials: list[str]) -> dict[str, str]:
    """tokenizer_config.json and friends, readable by transformers 4.x and 5.x."""
    added = {str(tokenizer.token_to_id(tok)): {
        "content": tok, "lstrip": False, "normalized": False, "rstrip": False,
        "single_word": False, "special": True} for tok in specials}
    extra = [tok for tok in specials if tok not in (IM_END, PAD)]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD,
        "unk_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 131072,
    }
    special_map = {"eos_token": IM_END, "pad_token": PAD, "additional_special_tokens": extra}
    return {
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        "chat_template.jinja": CHATML_TEMPLATE,
    }


def _read_hook(progress: Progress | None, path: Path) -> Callable[[int], None] | None:
    """Progress of the one pass over the train split: bytes read of its size."""
    if progress is None:
        return None
    size = path.stat().st_size
    progress("read", 0, size)
    return lambda done: progress("read", done, size)


def train_tokenizer(layout_or_texts: DatasetLayout | Path | str | Iterable[str],
                    out_dir: Path | str, *, vocab_size: int,
                    special_tokens: Iterable[str] = (),
                    sample_bytes: int = DEFAULT_SAMPLE_BYTES, seed: int = 0,
                    progress: Progress | None = None) -> Path:
    """Train on the dataset's train split (or on the given texts); the folder appears whole."""
    from tokenizers import pre_tokenizers, trainers

    specials = list(BASE_SPECIAL_TOKENS)
    specials += [tok for tok in dict.fromkeys(special_tokens) if tok not in specials]
    if vocab_size < 256 + len(specials):
        raise TokenizerError(f"--vocab {vocab_size} is below 256 bytes + {len(specials)} "
                             "special tokens")
    source: str
    if isinstance(layout_or_texts, DatasetLayout | Path | str):
        layout = (layout_or_texts if isinstance(layout_or_texts, DatasetLayout)
                  else DatasetLayout(Path(layout_or_texts)))
        train = layout.split_file("train")
        if not train.is_file():
            raise TokenizerError(f"{train}: no train split (run `homellm data split` first)")
        records: Iterable[Record] = iter_records(train, _read_hook(progress, train))
        source = str(train)
    else:
        records = (Document(id=str(i), source="texts", text=t)
                   for i, t in enumerate(layout_or_texts))
        source = "texts"
    texts = sample_texts(records, sample_bytes, seed)
    sampled = sum(len(t.encode("utf-8")) for t in texts)
    if not texts:
        raise TokenizerError(f"{source}: no text to train a tokenizer on")
    if progress:  # the trainer reports nothing until it is done: no total to show
        progress("train", 0, None)
    tokenizer = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer.save(str(staging / "tokenizer.json"))
        for name, text in _hf_files(tokenizer, specials).items():
            atomic_write_text(staging / name, text)
        meta = {"vocab_size": tokenizer.get_vocab_size(), "requested_vocab": vocab_size,
                "special_tokens": specials, "split_regex": SPLIT_REGEX, "normalizer": "NFC",
                "source": source, "sample_bytes": sample_bytes, "sampled_bytes": sampled,
                "sampled_units": len(texts), "seed": seed}
        atomic_write_text(staging / META_FILE, json.dumps(meta, ensure_ascii=False, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if progress:
        progress("train", sampled, sampled)
    return out


def load_tokenizer(tok_dir: Path | str) -> Tokenizer:
    """The `tokenizers` object of a Hugging Face tokenizer folder (ours or e.g. Qwen's)."""
    from tokenizers import Tokenizer

    path = Path(tok_dir) / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{tok_dir}: no tokenizer.json (not a Hugging Face fast tokenizer "
                             "folder)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise TokenizerError(f"{path}: cannot load ({exc})") from None


def tokenizer_sha256(tok_dir: Path | str) -> str:
    path = Path(tok_dir) / "tokenizer.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror})") from None


def tokenizer_id(tok_dir: Path | str) -> str:
    """Names the shards folder: the first 16 hex digits of tokenizer.json's sha256."""
    return tokenizer_sha256(tok_dir)[:16]


def special_id(tokenizer: Tokenizer, token: str, tok_dir: Path | str = "") -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise TokenizerError(f"{tok_dir or 'tokenizer'}: has no {token} token")
    return found
