"""``homellm data ingest``: inputs → cleaned records per input → deduplicated splits.

Each input (a book or text file, an SQL dump, a database) is read in a worker process by its
reader (``books.py``, ``dialogues.py``), cleaned (books: ``textclean.clean_book_text``; dialogue
turns: NFC, controls, whitespace), and written to ``ingested/<input-id>.jsonl`` through a temp
file, fsync and rename. The manifest (written the same way after every input) records each
input's content hash; a re-run skips inputs whose hash is recorded as done and whose output is
there, so a run killed by Ctrl-C or SIGKILL resumes where it was and ends with the same files
an uninterrupted run writes. Then every ingested file, in manifest order, goes through
deduplication, scrubbing and the split (``split.write_splits``).

Progress is measured in bytes of input: a worker reports the bytes its process has read
(``/proc/self/io`` ``rchar``), so a single 590 MB dump moves the bar too.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homellm.data.books import is_supported, iter_documents
from homellm.data.dialogues import DialogueMap, DialogueStats, iter_conversations, source_label
from homellm.data.layout import DatasetLayout
from homellm.data.records import Record, from_json
from homellm.data.textclean import clean_book_text
from homellm.errors import ConfigError, HomellmError
from homellm.fsutil import atomic_write_text

DUMP_SUFFIXES = (".sql", ".sql.gz", ".sql.bz2", ".sql.xz", ".dump")
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_SPACES = re.compile(r"[ \t\u00a0]+")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_HASH_CHUNK = 1 << 20


@dataclass
class IngestOptions:
    mapping: DialogueMap | None = None   # how dumps and databases become conversations
    skip_bad: bool = False
    text_field: str = "text"
    yo: str = "keep"
    workers: int = 0                     # 0: one per core, at most one per input
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    dedupe_threshold: float = 0.8
    scrub_dialogues: bool = True
    book_unit: str = "auto"


@dataclass
class Input:
    source: str        # a path, or a database URL
    kind: str          # "text" | "dump" | "database"
    size: int


@dataclass
class InputResult:
    input_id: str
    source: str
    kind: str
    size: int
    records: int = 0
    skipped: int = 0
    repaired: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    dialogue: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def classify(source: str) -> str:
    lower = source.lower()
    if "://" in lower or lower.endswith(DB_SUFFIXES):
        return "database"
    if lower.endswith(DUMP_SUFFIXES):
        return "dump"
    return "text"


def expand_inputs(sources: Iterable[str | Path]) -> list[Input]:
    """Files as given, folders walked (supported files, sorted), database URLs as they are."""
    found: list[Input] = []
    sources = list(sources)
    for source in sources:
        text = str(source)
        if "://" in text:
            found.append(Input(text, "database", 0))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                kind = classify(str(child))
                if kind != "text" or is_supported(child):
                    found.append(Input(str(child.resolve()), kind, child.stat().st_size))
        elif path.is_file():
            found.append(Input(str(path.resolve()), classify(text), path.stat().st_size))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    if not found:
        where = ", ".join(str(s) for s in sources)
        raise ConfigError(f"{where}: no input files found (supported: .txt .md .fb2 .epub "
                          ".jsonl .csv .parquet, SQL dumps, SQLite files)")
    return found


def input_id(item: Input) -> str:
    """The input's identity: sha256 of its bytes (a database URL: of the URL and the time)."""
    digest = hashlib.sha256()
    if item.kind == "database" and "://" in item.source:
        digest.update(f"{source_label(item.source)}|{time.time():.0f}".encode())
        return digest.hexdigest()[:16]
    with open(item.source, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def clean_turn(text: str) -> str:
    text = _CONTROLS.sub("", unicodedata.normalize("NFC", text))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _records(item: Input, options: IngestOptions, result: InputResult) -> Iterator[Record]:
    if item.kind == "text":
        for doc in iter_documents(Path(item.source), text_field=options.text_field):
            text, stats = clean_book_text(doc.text, yo=options.yo)  # type: ignore[arg-type]
            if not text.strip():
                result.skipped += 1
                continue
            doc.text = text
            doc.meta["clean"] = {k: v for k, v in asdict(stats).items() if v}
            result.repaired += int(doc.meta.get("repaired", 0) or 0)
            encoding = str(doc.meta.get("encoding", ""))
            result.encodings[encoding] = result.encodings.get(encoding, 0) + 1
            yield doc
        return
    if options.mapping is None:
        raise ConfigError(f"{item.source}: a dump or database needs --map (see `homellm data "
                          "inspect`) to say which table and columns hold the dialogues")
    stats = DialogueStats()
    for conv in iter_conversations(item.source, options.mapping, skip_bad=options.skip_bad,
                                   stats=stats):
        for turn in conv.turns:
            turn.text = clean_turn(turn.text)
        conv.turns = [t for t in conv.turns if t.text]
        if len(conv.turns) < options.mapping.min_turns:
            result.skipped += 1
            continue
        yield conv
    result.dialogue = {k: v for k, v in asdict(stats).items() if k != "dump"}
    if stats.dump is not None:
        result.skipped += stats.dump.statements_skipped + stats.dump.rows_skipped


_progress_slot: Any = None


def _init_worker(slots: Any, counter: Any) -> None:
    global _progress_slot
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _progress_slot = (slots, index)


def _read_bytes() -> int:
    try:
        with open("/proc/self/io", "rb") as handle:
            for line in handle:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ingest_one(item: Input, ident: str, out: Path, options: IngestOptions) -> InputResult:
    """Read, clean and write one input (in a worker process); the output appears whole or
    not at all."""
    result = InputResult(ident, source_label(item.source), item.kind, item.size)
    began, start_bytes = time.perf_counter(), _read_bytes()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.5):
            if _progress_slot is not None:
                slots, index = _progress_slot
                slots[index] = min(item.size, _read_bytes() - start_bytes)

    watcher = threading.Thread(target=report, daemon=True)
    watcher.start()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in _records(item, options, result):
                handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
                result.records += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        stop.set()
        if _progress_slot is not None:
            slots, index = _progress_slot
            slots[index] = 0
    result.seconds = round(time.perf_counter() - began, 3)
    return result


def load_manifest(layout: DatasetLayout) -> dict[str, Any]:
    try:
        data = json.loads(layout.manifest.read_text("utf-8"))
        if not isinstance(data.get("inputs"), dict):
            raise ValueError("no inputs")
        return data
    except FileNotFoundError:
        return {"version": 1, "inputs": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{layout.manifest}: not a homellm dataset manifest ({exc}); move the "
                          "folder away or give another -o") from None


def iter_ingested(layout: DatasetLayout, manifest: dict[str, Any]) -> Iterator[Record]:
    done = [i for i, e in manifest["inputs"].items() if e.get("status") == "done"]
    for ident in sorted(done, key=lambda i: manifest["inputs"][i]["source"]):
        path = layout.ingested_file(ident)
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                yield from_json(json.loads(line))


ProgressHook = Callable[[int, int, str], None]  # (bytes done, bytes total, what)


def run_ingest(sources: Iterable[str | Path], root: Path, options: IngestOptions,
               progress: ProgressHook | None = None) -> dict[str, Any]:
    """Ingest ``sources`` into the dataset folder ``root``; returns the manifest."""
    layout = DatasetLayout(Path(root))
    items = expand_inputs(sources)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(layout)
    for stale in layout.ingested.glob(".*.tmp") if layout.ingested.exists() else ():
        stale.unlink(missing_ok=True)  # a killed run's half-written output (one writer at a time)
    manifest["options"] = {"seed": options.seed, "ratios": list(options.ratios),
                           "dedupe_threshold": options.dedupe_threshold,
                           "scrub_dialogues": options.scrub_dialogues, "yo": options.yo,
                           "book_unit": options.book_unit,
                           "mapping": asdict(options.mapping) if options.mapping else None}
    total = sum(i.size for i in items)
    done_bytes = 0
    todo: list[tuple[Input, str]] = []
    for item in items:
        ident = input_id(item)
        entry = manifest["inputs"].get(ident)
        if entry and entry.get("status") == "done" and layout.ingested_file(ident).exists():
            done_bytes += item.size
            continue
        todo.append((item, ident))
    tell = progress or (lambda done, total, what: None)
    manifest["last_run"] = {"inputs": len(items), "already_done": len(items) - len(todo)}
    tell(done_bytes, total, f"{len(items) - len(todo)} of {len(items)} inputs already done")
    if todo:
        done_bytes = _ingest_all(todo, layout, options, manifest, done_bytes, total, tell)
    tell(total, total, "deduplicating and splitting")
    from homellm.data.split import write_splits

    stats = write_splits(iter_ingested(layout, manifest), layout, seed=options.seed,
                         ratios=options.ratios, dedupe_threshold=options.dedupe_threshold,
                         scrub_dialogues=options.scrub_dialogues, book_unit=options.book_unit,
                         workers=options.workers or os.cpu_count() or 1)
    manifest["splits"] = stats.to_json()
    atomic_write_text(layout.manifest, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _ingest_all(todo: list[tuple[Input, str]], layout: DatasetLayout, options: IngestOptions,
                manifest: dict[str, Any], done_bytes: int, total: int,
                tell: ProgressHook) -> int:
    workers = options.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))
    ctx = multiprocessing.get_context("spawn")
    slots, counter = ctx.Array("q", workers), ctx.Value("i", 0)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                initargs=(slots, counter)) as pool:
        futures = {pool.submit(ingest_one, item, ident, layout.ingested_file(ident), options):
                   (item, ident) for item, ident in todo}
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                item, ident = futures[future]
                try:
                    result = future.result()
                    entry = {**asdict(result), "status": "done"}
                except HomellmError as exc:
                    if not options.skip_bad:
                        for other in pending:
                            other.cancel()
                        raise
                    # --skip-bad: the input is left out and said so; the next run retries it
                    failed = InputResult(ident, source_label(item.source), item.kind, item.size)
                    entry = {**asdict(failed),
                             "status": "failed", "error": str(exc)}
                done_bytes += item.size
                manifest["inputs"][ident] = entry
                atomic_write_text(layout.manifest,
                                  json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
                tell(done_bytes, total, Path(item.source).name)
            tell(done_bytes + sum(slots[:]), total, "")
    return done_bytes
