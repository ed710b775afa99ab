"""`homellm data tokenize`: the splits as fixed-size token shards any trainer can memory-map.

Per split, the split's records are one stream of tokens cut every ``shard_tokens`` tokens
(a document may continue into the next shard). Shard ``k`` of ``train`` is four files in
``tokens/<tokenizer-id>/``:

  train-0000k.bin    token ids, uint16 when every id fits (vocab ≤ 65536), else uint32
  train-0000k.mask   uint8 loss mask aligned with the tokens
  train-0000k.docs   uint32 offsets, inside the shard, where documents/conversations start
  train-0000k.src    uint32 per entry of .docs: the document's index in manifest ``sources``

manifest.json holds the tokenizer (id, sha256), dtype, the dataset's ``sources`` (index →
{"name": the records' ``source``, i.e. the input path the ingest manifest lists (a database
URL without its password); "kind": "books" for documents, "dialogues" for conversations}),
per split the tokens per source name, and per shard its token and document counts, tokens per
source index, each file's sha256, and the split positions (line, byte, tokens already taken
from that line's record) where it starts and ends. A shard whose entry is present, starts
where the previous one ends and whose files have the right sizes is not redone; any other is
rebuilt from its start position alone, so deleting one shard (and its entry) redoes just that
one.

Rendering: a document is its text + ``<|endoftext|>``, mask all 1. A conversation is ChatML
(``render_conversation``) + ``<|endoftext|>``; the mask is 1 on assistant text and the
assistant's ``<|im_end|>``, 0 on turn headers, other roles, newlines after ``<|im_end|>`` and
the final ``<|endoftext|>``. Turn texts are encoded on their own (headers are fixed ids), as a
chat engine sees them: the prompt ends with ``<|im_start|>assistant\\n`` and the reply follows.
Text is encoded with ``encode_special_tokens``: a literal ``<|im_end|>`` in a book stays text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from homellm.data.layout import SPLITS, DatasetLayout
from homellm.data.records import Conversation, Record, from_json
from homellm.errors import HomellmError
from homellm.fsutil import atomic_write_text

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT = "homellm-shards-v2"  # v2: .src files and per-source token counts
SHARD_TOKENS = 100_000_000   # 200 MB at uint16 (+100 MB mask): the unit of resume
BATCH_BYTES = 4 << 20        # JSON lines per encode_batch call
MANIFEST = "manifest.json"
FILES = ("bin", "mask", "docs", "src")
KINDS = {"document": "books", "conversation": "dialogues"}  # record kind → source kind

Progress = Callable[[str, int, int | None], None]


class ShardError(HomellmError):
    """A shard folder is missing, incomplete or does not match its manifest."""


@dataclass(frozen=True)
class Pos:
    """Where a shard starts or ends in a split file: the record on ``line`` (0-based, at
    ``byte``) of which ``skip`` tokens are already in earlier shards."""

    line: int
    byte: int
    skip: int


class SourceIndex:
    """The manifest's ``sources`` list (extended in place) and each record's index in it. The
    index is uint32 on disk: a library folder ingests every book file as its own input, so a
    dataset can have far more than 65,536 sources."""

    def __init__(self, entries: list[dict[str, str]]) -> None:
        self.entries = entries
        self._index = {(e["name"], e["kind"]): i for i, e in enumerate(entries)}

    def of(self, record: Record) -> int:
        key = (record.source, KINDS[record.kind])
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.entries)
            self.entries.append({"name": key[0], "kind": key[1]})
        return index


class ChatEncoder:
    """Records → token ids and loss mask, a batch at a time through ``encode_batch_fast``."""

    def __init__(self, tokenizer: Tokenizer, name: str = "tokenizer") -> None:
        from homellm.tokenizer import EOT, IM_END, IM_START, special_id

        self.tok = tokenizer
        self.tok.encode_special_tokens = True
        self.eot = special_id(tokenizer, EOT, name)
        self.im_end = special_id(tokenizer, IM_END, name)
        self.im_start = special_id(tokenizer, IM_START, name)
        self.newline = self.encode_texts(["\n"])[0]
        self._headers: dict[str, list[int]] = {}

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def _header(self, role: str) -> list[int]:
        if role not in self._headers:
            self._headers[role] = [self.im_start, *self.encode_texts([role + "\n"])[0]]
        return self._headers[role]

    @staticmethod
    def texts(records: list[Record]) -> list[str]:
        texts: list[str] = []
        for record in records:
            if isinstance(record, Conversation):
                texts.extend(t.text for t in record.turns)
            else:
                texts.append(record.text)
        return texts

    def assemble(self, records: list[Record], encoded: list[list[int]],
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids uint32, mask uint8, token count per record) from the encoded texts()."""
        ids: list[int] = []
        zeros: list[tuple[int, int]] = []  # mask-0 spans; everything else is 1
        lengths = np.empty(len(records), dtype=np.int64)
        headers, newline, im_end = self._headers, self.newline, self.im_end
        at = 0
        for n, record in enumerate(records):
            start = len(ids)
            if isinstance(record, Conversation):
                for turn in record.turns:
                    header = headers.get(turn.role) or self._header(turn.role)
                    text = encoded[at]
                    at += 1
                    a = len(ids)
                    ids += header
                    ids += text
                    if turn.role == "assistant":
                        zeros.append((a, a + len(header)))
                    else:
                        zeros.append((a, len(ids) + 1))
                    ids.append(im_end)
                    zeros.append((len(ids), len(ids) + len(newline)))
                    ids += newline
                zeros.append((len(ids), len(ids) + 1))
            else:
                ids += encoded[at]
                at += 1
            ids.append(self.eot)
            lengths[n] = len(ids) - start
        mask = np.ones(len(ids), dtype=np.uint8)
        for a, b in zeros:
            mask[a:b] = 0
        return np.array(ids, dtype=np.uint32), mask, lengths

    def encode(self, records: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.assemble(records, self.encode_texts(self.texts(records)))


def _has_text(record: Record) -> bool:
    if isinstance(record, Conversation):
        return bool(record.turns)
    return bool(record.text)


@dataclass
class _Batch:
    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray    # start of each record in ids, plus the end: len(records) + 1
    sources: np.ndarray    # each record's source index
    lines: list[int]
    bytes: list[int]
    skip0: int             # tokens of the first record that earlier shards already hold
    cur: int = 0

    def pos_before(self, cur: int) -> Pos:
        """The position after token cur - 1: its record and how many of its tokens are taken."""
        j = int(np.searchsorted(self.offsets, cur, "left")) - 1
        taken = cur - int(self.offsets[j]) + (self.skip0 if j == 0 else 0)
        return Pos(self.lines[j], self.bytes[j], taken)


def _read(path: Path, start: Pos,
          batch_bytes: int) -> Iterator[tuple[list[Record], list[int], list[int]]]:
    """Records with text from ``start`` on, with their line numbers and byte offsets."""
    with open(path, "rb") as handle:
        handle.seek(start.byte)
        line_no, offset = start.line, start.byte
        while True:
            records: list[Record] = []
            lines: list[int] = []
            starts: list[int] = []
            size = 0
            while size < batch_bytes:
                raw = handle.readline()
                if not raw:
                    break
                if raw.strip():
                    try:
                        record = from_json(json.loads(raw))
                    except (ValueError, TypeError, KeyError) as exc:
                        raise ShardError(f"{path}:{line_no + 1}: not a dataset record "
                                         f"({exc})") from None
                    if _has_text(record):
                        records.append(record)
                        lines.append(line_no)
                        starts.append(offset)
                line_no, offset, size = line_no + 1, offset + len(raw), size + len(raw)
            if records:
                yield records, lines, starts
            if size == 0:
                return


def _batches(path: Path, start: Pos, encoder: ChatEncoder, sources: SourceIndex,
             batch_bytes: int) -> Iterator[_Batch]:
    """Encoded batches; the next batch is encoded (in Rust, without the GIL) on a thread
    while this one is read, assembled and written."""
    skip = start.skip
    with ThreadPoolExecutor(1, thread_name_prefix="encode") as pool:
        previous = None
        for item in chain(_read(path, start, batch_bytes), [None]):
            current = None
            if item is not None:
                current = (*item, pool.submit(encoder.encode_texts, encoder.texts(item[0])))
            if previous is not None:
                records, lines, starts, future = previous
                ids, mask, lengths = encoder.assemble(records, future.result())
                offsets = np.zeros(len(records) + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                if skip:
                    ids, mask = ids[skip:], mask[skip:]
                    offsets[1:] -= min(skip, int(lengths[0]))
                indices = np.array([sources.of(r) for r in records], dtype=np.int64)
                yield _Batch(ids, mask, offsets, indices, lines, starts, skip)
                skip = 0
            previous = current


class _ShardWriter:
    """The four files of one shard, written to temp names, hashed as they are written."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype) -> None:
        self.folder, self.name, self.dtype = folder, name, dtype
        self.tokens = self.docs = 0
        self.source_tokens: dict[int, int] = {}
        self.handles: dict[str, IO[bytes]] = {}
        self.hashes = {kind: hashlib.sha256() for kind in FILES}
        for kind in FILES:
            self.handles[kind] = open(folder / f".{name}.{kind}.tmp", "wb")  # noqa: SIM115

    def write(self, ids: np.ndarray, mask: np.ndarray, doc_starts: np.ndarray,
              doc_sources: np.ndarray, source_tokens: dict[int, int]) -> None:
        for kind, array in (("bin", ids.astype(self.dtype, copy=False)), ("mask", mask),
                            ("docs", (doc_starts + self.tokens).astype(np.uint32)),
                            ("src", doc_sources.astype(np.uint32))):
            data = memoryview(np.ascontiguousarray(array)).cast("B")
            self.handles[kind].write(data)
            self.hashes[kind].update(data)
        self.tokens += len(ids)
        self.docs += len(doc_starts)
        for index, count in source_tokens.items():
            self.source_tokens[index] = self.source_tokens.get(index, 0) + count

    def finish(self) -> dict[str, str]:
        for kind, handle in self.handles.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(self.folder / f".{self.name}.{kind}.tmp",
                       self.folder / f"{self.name}.{kind}")
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return {kind: h.hexdigest() for kind, h in self.hashes.items()}

    def abort(self) -> None:
        for kind, handle in self.handles.items():
            handle.close()
            (self.folder / f".{self.name}.{kind}.tmp").unlink(missing_ok=True)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in it (ids 0..65535), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def file_sizes(entry: dict[str, Any], itemsize: int) -> dict[str, int]:
    return {"bin": entry["tokens"] * itemsize, "mask": entry["tokens"], "docs": entry["docs"] * 4,
            "src": entry["docs"] * 4}


def _files_ok(folder: Path, entry: dict[str, Any], itemsize: int) -> bool:
    name = shard_name(entry["split"], entry["index"])
    for kind, size in file_sizes(entry, itemsize).items():
        path = folder / f"{name}.{kind}"
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _write_shard(folder: Path, split: str, index: int, start: Pos, batches: Iterator[_Batch],
                 pending: list[_Batch], shard_tokens: int, dtype: np.dtype) -> dict[str, Any]:
    """Fill one shard from ``pending`` (a batch begun by the previous shard) and ``batches``."""
    writer = _ShardWriter(folder, shard_name(split, index), dtype)
    end, last = start, False
    try:
        while writer.tokens < shard_tokens:
            if not pending:
                batch = next(batches, None)
                if batch is None:
                    last = True
                    break
                pending.append(batch)
            batch = pending[0]
            stop = min(len(batch.ids), batch.cur + shard_tokens - writer.tokens)
            begins = batch.offsets[:-1]
            here = (begins >= batch.cur) & (begins < stop)
            here[:1 if batch.skip0 else 0] = False  # a continued record does not start here
            writer.write(batch.ids[batch.cur:stop], batch.mask[batch.cur:stop],
                         begins[here] - batch.cur, batch.sources[here],
                         _tokens_by_source(batch, batch.cur, stop))
            if stop > batch.cur:
                end = batch.pos_before(stop)
            batch.cur = stop
            if stop == len(batch.ids):
                pending.pop(0)
        sha256 = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {"split": split, "index": index, "tokens": writer.tokens, "docs": writer.docs,
            "sources": {str(i): n for i, n in sorted(writer.source_tokens.items())},
            "sha256": sha256, "start": asdict(start), "end": asdict(end), "last": last}


def _tokens_by_source(batch: _Batch, cur: int, stop: int) -> dict[int, int]:
    """Tokens in [cur, stop) per source index, the tail of a continued record included."""
    counts = (np.minimum(batch.offsets[1:], stop) - np.maximum(batch.offsets[:-1], cur))
    taken = counts > 0
    indices, inverse = np.unique(batch.sources[taken], return_inverse=True)
    sums = np.bincount(inverse, weights=counts[taken], minlength=len(indices))
    return {int(i): int(n) for i, n in zip(indices, sums, strict=True)}


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return {"path": path.name, "size": path.stat().st_size, "sha256": digest.hexdigest()}


def _save(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _tokenize_split(folder: Path, path: Path, split: str, state: dict[str, Any],
                    manifest: dict[str, Any], encoder: ChatEncoder, shard_tokens: int,
                    batch_bytes: int, dtype: np.dtype, progress: Progress | None) -> None:
    sources = SourceIndex(manifest["sources"])
    entries = {e["index"]: e for e in state["shards"]}
    pos, index = Pos(0, 0, 0), 0
    batches: Iterator[_Batch] | None = None
    pending: list[_Batch] = []
    total_bytes = state["source"]["size"]
    while True:
        entry = entries.get(index)
        if (entry and Pos(**entry["start"]) == pos
                and _files_ok(folder, entry, dtype.itemsize)):
            batches, pending = None, []
        else:
            if batches is None:
                batches = _batches(path, pos, encoder, sources, batch_bytes)
            entry = _write_shard(folder, split, index, pos, batches, pending, shard_tokens,
                                 dtype)
            if entry["tokens"] == 0 and index > 0:
                entries[index - 1]["last"] = True  # the stream ended exactly at a shard's end
                entry = None
            else:
                entries[index] = entry
            state["shards"] = [entries[i] for i in sorted(entries)]
            _save(folder, manifest)
        if entry is None or entry["last"]:
            break
        pos, index = Pos(**entry["end"]), index + 1
        if progress:
            progress(split, pos.byte, total_bytes)
    count = index + (entry is not None)
    state["shards"] = [entries[i] for i in range(count)]
    state["tokens"] = sum(e["tokens"] for e in state["shards"])
    state["documents"] = sum(e["docs"] for e in state["shards"])
    by_name: dict[str, int] = {}
    for kept in state["shards"]:
        for number, tokens in kept["sources"].items():
            name = sources.entries[int(number)]["name"]
            by_name[name] = by_name.get(name, 0) + tokens
    state["sources"] = dict(sorted(by_name.items()))
    state["complete"] = True
    _save(folder, manifest)
    for stale in folder.glob(f"{split}-*.*"):
        number = stale.stem.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) >= count:
            stale.unlink()


def tokenize_dataset(layout: DatasetLayout | Path | str, tok_dir: Path | str, *,
                     shard_tokens: int = SHARD_TOKENS, batch_bytes: int = BATCH_BYTES,
                     splits: Iterable[str] = SPLITS, progress: Progress | None = None) -> Path:
    """Write (or finish) the token shards of the splits; returns ``tokens/<tokenizer-id>/``."""
    from homellm.tokenizer import load_tokenizer, tokenizer_sha256

    if not isinstance(layout, DatasetLayout):
        layout = DatasetLayout(Path(layout))
    tokenizer = load_tokenizer(tok_dir)
    sha = tokenizer_sha256(tok_dir)
    encoder = ChatEncoder(tokenizer, str(tok_dir))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    folder = layout.tokens(sha[:16])
    folder.mkdir(parents=True, exist_ok=True)
    fresh = {"format": FORMAT, "tokenizer": {"id": sha[:16], "sha256": sha,
                                             "dir": str(Path(tok_dir).resolve()),
                                             "vocab_size": vocab, "eot_id": encoder.eot},
             "dtype": dtype.name, "shard_tokens": shard_tokens, "sources": [], "splits": {}}
    manifest = fresh
    try:
        old = json.loads((folder / MANIFEST).read_text("utf-8"))
        if all(old.get(k) == fresh[k] for k in ("format", "dtype", "shard_tokens")) and \
                old.get("tokenizer", {}).get("sha256") == sha:
            manifest = {**fresh, "sources": old.get("sources", []),
                        "splits": old.get("splits", {})}
    except (OSError, ValueError):
        pass  # no manifest or a damaged one: every shard is rebuilt
    for split in splits:
        path = layout.split_file(split)
        if not path.is_file():
            continue
        source = _file_digest(path)
        state = manifest["splits"].get(split)
        if not state or state.get("source") != source:
            state = {"source": source, "complete": False, "shards": []}
        state["complete"] = False
        manifest["splits"][split] = state
        _tokenize_split(folder, path, split, state, manifest, encoder, shard_tokens,
                        batch_bytes, dtype, progress)
    return folder
