"""``homellm data``: the typer sub-app (ingest, inspect, tokenize, report). Parsing, progress
and rendering only; the work is in ``data/``'s modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from homellm.cliutil import fail
from homellm.errors import HomellmError

data_app = typer.Typer(help="Your books and dialogue dumps → clean splits → token shards.",
                       no_args_is_help=True)
Opt = typer.Option




def byte_progress(console: Console, label: str) -> Any:
    """A rich progress bar over bytes (rate and ETA), fed by ``(done, total, what)`` calls."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[what]}"), console=console, transient=False)
    task = progress.add_task(label, total=None, what="")

    def hook(done: int, total: int, what: str) -> None:
        progress.update(task, completed=done, total=total or None,
                        **({"what": what} if what else {}))

    return progress, hook


@data_app.command("ingest")
def ingest(
    sources: Annotated[list[str], typer.Argument(help="files, folders, SQL dumps (.sql, .sql.gz), "
                                                     "SQLite files or database URLs")],
    out: Annotated[Path, Opt("-o", "--out", help="the dataset folder (resumable)")],
    map_: Annotated[str | None, Opt("--map", help="dialogues in a dump/database: table=…,"
                                                  "conversation=…,role=…,text=…,order=…,"
                                                  "roles=user:user,bot:assistant; or a YAML "
                                                  "file")] = None,
    skip_bad: Annotated[bool, Opt("--skip-bad", help="skip (and count) what cannot be "
                                                     "parsed instead of stopping")] = False,
    seed: Annotated[int, Opt(help="the split's seed")] = 0,
    split: Annotated[str, Opt(help="train,val,test fractions")] = "0.8,0.1,0.1",
    dedupe_threshold: Annotated[float, Opt(help="near-duplicate Jaccard threshold")] = 0.8,
    scrub: Annotated[bool, Opt("--scrub/--no-scrub", help="replace e-mails, URLs, phones, "
                               "cards, IBANs, accounts, SNILS, INN, passports in chats")] = True,
    yo: Annotated[str, Opt(help="keep ё, or replace it with е (keep|e)")] = "keep",
    text_field: Annotated[str, Opt(help="the text field of .jsonl/.csv/.parquet inputs")]
    = "text",
    workers: Annotated[int, Opt(help="processes (0: one per core)")] = 0,
    json_output: Annotated[bool, Opt("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Read, clean, deduplicate and split your corpus into DATASET (re-runs skip done inputs)."""
    from homellm.data.dialogues import DialogueMap
    from homellm.data.pipeline import IngestOptions, run_ingest
    from homellm.errors import ConfigError

    console = Console(stderr=json_output)
    try:
        ratios = tuple(float(x) for x in split.split(","))
        if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-6 or min(ratios) < 0:
            raise ConfigError(f"--split {split!r}: three fractions that add up to 1")
        if yo not in ("keep", "e"):
            raise ConfigError(f"--yo {yo!r}: keep or e")
        options = IngestOptions(mapping=DialogueMap.load(map_) if map_ else None,
                                skip_bad=skip_bad, text_field=text_field, yo=yo,
                                workers=workers, seed=seed, ratios=ratios,  # type: ignore[arg-type]
                                dedupe_threshold=dedupe_threshold, scrub_dialogues=scrub)
        progress, hook = byte_progress(console, "ingest")
        with progress:
            manifest = run_ingest(sources, out, options, hook)
    except ValueError:
        raise fail(console, ConfigError(f"--split {split!r}: three numbers like 0.8,0.1,0.1")
                    ) from None
    except HomellmError as exc:
        raise fail(console, exc) from None
    except KeyboardInterrupt:
        console.print("interrupted: finished inputs are kept; run the same command to resume")
        raise typer.Exit(130) from None
    if json_output:
        print(json.dumps(manifest, indent=1, ensure_ascii=False))
        return
    table = Table(title=f"dataset {out}", title_justify="left")
    for column in ("input", "kind", "records", "skipped", "repaired", "s"):
        table.add_column(column)
    failed = []
    for entry in manifest["inputs"].values():
        table.add_row(escape(Path(entry["source"]).name), entry["kind"], str(entry["records"]),
                      str(entry["skipped"]), str(entry["repaired"]), f"{entry['seconds']:.1f}")
        if entry.get("status") == "failed":
            failed.append(entry)
    console.print(table)
    for entry in failed:
        console.print(f"[yellow]skipped input:[/] {escape(entry['error'])}", highlight=False)
    splits = manifest.get("splits") or {}
    run = manifest.get("last_run", {})
    dedupe = (splits.get("dedupe") or {}).get("totals", {})
    console.print(f"{run.get('already_done', 0)} of {run.get('inputs', 0)} inputs already done "
                  f"(resumed); records per split {splits.get('totals', {})}; duplicates removed "
                  f"{dedupe}; scrubbed {splits.get('scrub', {})}", highlight=False)
    console.print(f"next: homellm tokenizer train {out} -o TOKENIZER_DIR", highlight=False)


@data_app.command("inspect")
def inspect(
    source: Annotated[str, typer.Argument(help="an SQL dump, a SQLite file or a database URL")],
    samples: Annotated[int, Opt(help="sample rows per table")] = 3,
    skip_bad: Annotated[bool, Opt("--skip-bad")] = False,
    json_output: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Tables, columns, row counts and sample rows: what you need to write --map."""
    from homellm.data.dialogues import inspect_dump

    console = Console(stderr=json_output)
    try:
        tables = inspect_dump(source, samples, skip_bad=skip_bad)
    except HomellmError as exc:
        raise fail(console, exc) from None
    if json_output:
        print(json.dumps([{"name": t.name, "columns": list(t.columns), "rows": t.row_count,
                           "samples": [[_short(v) for v in row] for row in t.sample_rows]}
                          for t in tables], indent=1, ensure_ascii=False))
        return
    for t in tables:
        table = Table(title=f"{t.name}: {t.row_count:,} rows", title_justify="left")
        for column in t.columns:
            table.add_column(escape(column), overflow="fold", max_width=40)
        for row in t.sample_rows:
            table.add_row(*(escape(str(_short(v))) for v in row))
        console.print(table)


def _short(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + "…"
    return value


def stage_progress(console: Console, in_bytes: bool = False) -> Any:
    """A rich progress bar fed by ``(stage, done, total)`` calls (rate and ETA per stage);
    ``in_bytes``: done and total are bytes."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts = ((DownloadColumn(), TransferSpeedColumn()) if in_bytes
              else (MofNCompleteColumn(),))
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *counts,
                        TaskProgressColumn(), TimeRemainingColumn(), console=console)
    tasks: dict[str, Any] = {}

    def hook(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return progress, hook


@data_app.command("tokenize")
def tokenize(
    dataset: Annotated[Path, typer.Argument(help="a dataset folder made by `data ingest`")],
    tokenizer: Annotated[Path, Opt(help="a tokenizer folder (`homellm tokenizer train`)")],
    shard_tokens: Annotated[int, Opt(help="tokens per shard")] = 100_000_000,
) -> None:
    """Token shards per split (uint16/uint32 memmaps, document index, loss mask, checksums);
    shards already complete are kept."""
    from homellm.data.layout import DatasetLayout
    from homellm.data.shards import tokenize_dataset

    console = Console()
    try:
        progress, hook = stage_progress(console)
        with progress:
            folder = tokenize_dataset(DatasetLayout(dataset), tokenizer,
                                      shard_tokens=shard_tokens, progress=hook)
    except HomellmError as exc:
        raise fail(console, exc) from None
    except KeyboardInterrupt:
        console.print("interrupted: finished shards are kept; run the same command to resume")
        raise typer.Exit(130) from None
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    counts = {split: info.get("tokens") for split, info in manifest.get("splits", {}).items()}
    console.print(f"shards in {folder}: tokens {counts}", highlight=False)


tokenizer_app = typer.Typer(help="Train a byte-level BPE tokenizer on your corpus; compare "
                                 "tokenizers.", no_args_is_help=True)


@tokenizer_app.command("train")
def tokenizer_train(
    dataset: Annotated[Path, typer.Argument(help="a dataset folder made by `data ingest`")],
    out: Annotated[Path, Opt("-o", "--out", help="the tokenizer folder to write")],
    vocab: Annotated[int, Opt(help="vocabulary size")] = 50000,
    special: Annotated[list[str] | None, Opt(help="extra special tokens, e.g. "
                                                  "--special '<|dialogue|>'")] = None,
    sample_mb: Annotated[int, Opt(help="train on at most this many MB of the train split")]
    = 512,
    seed: Annotated[int, Opt(help="the sample's seed")] = 0,
) -> None:
    """Byte-level BPE (Hugging Face tokenizers) with ChatML turn markers and a chat template,
    saved so AutoTokenizer and `transformers serve` load it."""
    from homellm.data.layout import DatasetLayout
    from homellm.tokenizer import tokenizer_id, train_tokenizer

    console = Console()
    try:
        progress, hook = stage_progress(console, in_bytes=True)
        with progress:
            folder = train_tokenizer(DatasetLayout(dataset), out, vocab_size=vocab,
                                     special_tokens=tuple(special or ()),
                                     sample_bytes=sample_mb * 1024 * 1024, seed=seed,
                                     progress=hook)
    except HomellmError as exc:
        raise fail(console, exc) from None
    console.print(f"tokenizer {tokenizer_id(folder)} in {folder}", highlight=False)


@tokenizer_app.command("report")
def tokenizer_report_command(
    dataset: Annotated[Path, typer.Argument(help="a dataset folder made by `data ingest`")],
    tokenizers: Annotated[list[Path], Opt("--tokenizer", help="tokenizer folder(s) to compare "
                                                               "(yours, Qwen's, ...)")],
    split: Annotated[str, Opt(help="the split to measure on")] = "val",
    json_output: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Bytes per token, characters per token and tokens per word, per source, next to a
    byte-level baseline: what a Russian-trained vocabulary buys."""
    from homellm.tokenizer_report import tokenizer_report

    console = Console(stderr=json_output)
    try:
        names = {}
        for folder in tokenizers:
            name = folder.name or str(folder)
            names[name if name not in names else str(folder)] = folder
        report = tokenizer_report(dataset, names, split=split)
    except HomellmError as exc:
        raise fail(console, exc) from None
    if json_output:
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    else:
        console.print(escape(report.table()), highlight=False)


def _source_tokens_table(per_split: dict[str, dict[str, int]], splits: list[str]) -> Table:
    """One tokenizer's tokens per source (rows) and split (columns); sources named as in the
    report's by-source figures (the file name, summed over sources that share one)."""
    splits = [s for s in splits if s in per_split] + [s for s in per_split if s not in splits]
    rows: dict[str, dict[str, int]] = {}
    for split in splits:
        for name, count in per_split[split].items():
            row = rows.setdefault(Path(name).name, {})
            row[split] = row.get(split, 0) + count
    table = Table()
    table.add_column("source")
    for split in splits:
        table.add_column(split, justify="right")
    for name, row in sorted(rows.items()):
        table.add_row(escape(name), *(f"{row[s]:,}" if s in row else "—" for s in splits))
    return table


@data_app.command("report")
def report(
    dataset: Annotated[Path, typer.Argument(help="a dataset folder made by `data ingest`")],
    html: Annotated[bool, Opt("--html/--no-html", help="also write report/report.html")] = True,
    json_output: Annotated[bool, Opt("--json")] = False,
) -> None:
    """Records, characters and tokens per split and source, length histograms, duplicates
    removed, encodings repaired, Cyrillic vs Latin, samples (JSON, PNG, HTML)."""
    from homellm.data.report import build_report, write_report

    console = Console(stderr=json_output)
    try:
        figures, lengths = build_report(dataset)
        written = write_report(dataset, figures, lengths, html=html)
    except HomellmError as exc:
        raise fail(console, exc) from None
    if json_output:
        print(json.dumps(figures, indent=1, ensure_ascii=False))
        return
    table = Table(title=f"dataset {dataset}", title_justify="left")
    for column in ("split", "records", "characters", "Cyrillic", "tokens"):
        table.add_column(column)
    for split, info in figures["splits"].items():
        tokens = ", ".join(f"{v.get(split, 0):,}" for v in figures["tokens"].values()) or "—"
        table.add_row(split, f"{info['records']:,}", f"{info['chars']:,}",
                      f"{(info['cyrillic_share'] or 0):.1%}", tokens)
    console.print(table)
    for tok_id, per_split in figures["source_tokens"].items():
        if per_split:  # shards written before per-source counts have none
            # a heading line, not the table's title: rich wraps a title to the table's width
            console.print(f"tokens per source ({escape(tok_id)})", highlight=False)
            console.print(_source_tokens_table(per_split, list(figures["splits"])))
    console.print(f"mojibake lines repaired: {figures['mojibake_lines_repaired']}; encodings: "
                  f"{figures['encodings']}", highlight=False)
    console.print("written: " + ", ".join(str(p) for p in written), highlight=False)
