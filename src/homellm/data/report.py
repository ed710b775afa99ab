"""``homellm data report``: what is in a dataset folder, as numbers, PNGs and one HTML page.

Per split and source: documents or conversations, characters, tokens (per tokenizer whose
shards are under ``tokens/``, per source from the shard manifest), length histograms; the
share of Cyrillic and Latin letters; duplicates removed and items scrubbed (from
``splits/stats.json``); encodings seen and mojibake lines repaired (from the manifest); a few
samples. Everything is computed by reading the split files once. Sources are keyed by file
name (a database by its URL's last part), tokens summed over sources that share one.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homellm.data.layout import SPLITS, DatasetLayout
from homellm.data.records import Conversation, Document, Record, from_json
from homellm.errors import ConfigError
from homellm.fsutil import atomic_write_bytes, atomic_write_text

SAMPLES = 3
SAMPLE_CHARS = 300


def record_text(record: Record) -> str:
    if isinstance(record, Document):
        return record.text
    return "\n".join(t.text for t in record.turns)


@dataclass
class SplitSummary:
    records: Counter[str] = field(default_factory=Counter)      # by source
    chars: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)        # document / conversation
    lengths: list[int] = field(default_factory=list)            # characters per record
    cyrillic: int = 0
    latin: int = 0
    samples: list[str] = field(default_factory=list)


def _letters(text: str) -> tuple[int, int]:
    cyr = lat = 0
    for ch in text:
        if "а" <= ch.lower() <= "я" or ch in "ёЁ":
            cyr += 1
        elif "a" <= ch.lower() <= "z":
            lat += 1
    return cyr, lat


def summarize(layout: DatasetLayout) -> dict[str, SplitSummary]:
    summaries: dict[str, SplitSummary] = {}
    for split in SPLITS:
        path = layout.split_file(split)
        if not path.exists():
            continue
        s = summaries[split] = SplitSummary()
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    record = from_json(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ConfigError(f"{path}:{number}: not a dataset record ({exc})") from None
                text = record_text(record)
                source = Path(record.source).name
                s.records[source] += 1
                s.chars[source] += len(text)
                s.kinds["conversation" if isinstance(record, Conversation) else "document"] += 1
                s.lengths.append(len(text))
                cyr, lat = _letters(text)
                s.cyrillic += cyr
                s.latin += lat
                if len(s.samples) < SAMPLES:
                    s.samples.append(text[:SAMPLE_CHARS])
    if not summaries:
        raise ConfigError(f"{layout.splits}: no split files; run `homellm data ingest` first")
    return summaries


def _tokens(layout: DatasetLayout
            ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, dict[str, int]]]]:
    """For every tokenizer the dataset has shards of: tokens per split, and per split and
    source name (shards written before per-source counts existed have none)."""
    totals: dict[str, dict[str, int]] = {}
    by_source: dict[str, dict[str, dict[str, int]]] = {}
    for manifest in sorted((layout.root / "tokens").glob("*/manifest.json")):
        try:
            data = json.loads(manifest.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{manifest}: unreadable ({exc}); re-run `homellm data "
                              "tokenize`") from None
        tok_id, splits = manifest.parent.name, data.get("splits", {})
        totals[tok_id] = {split: int(info.get("tokens", 0)) for split, info in splits.items()}
        by_source[tok_id] = {split: {name: int(n) for name, n in info["sources"].items()}
                             for split, info in splits.items() if "sources" in info}
    return totals, by_source


def build_report(root: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The report's figures, and the record lengths per split (for the histograms)."""
    layout = DatasetLayout(Path(root))
    summaries = summarize(layout)
    manifest = json.loads(layout.manifest.read_text("utf-8")) if layout.manifest.exists() else {}
    stats = (json.loads(layout.split_stats.read_text("utf-8"))
             if layout.split_stats.exists() else {})
    encodings: Counter[str] = Counter()
    repaired = skipped = 0
    for entry in manifest.get("inputs", {}).values():
        encodings.update(entry.get("encodings", {}))
        repaired += int(entry.get("repaired", 0))
        skipped += int(entry.get("skipped", 0))
    tokens, source_tokens = _tokens(layout)
    splits = {}
    for split, s in summaries.items():
        letters = s.cyrillic + s.latin
        by_source: dict[str, dict[str, Any]] = {
            src: {"records": n, "chars": s.chars[src], "tokens": {}}
            for src, n in sorted(s.records.items())}
        for tok_id, per_split in source_tokens.items():
            for name, count in per_split.get(split, {}).items():
                entry = by_source.setdefault(Path(name).name,
                                             {"records": 0, "chars": 0, "tokens": {}})
                entry["tokens"][tok_id] = entry["tokens"].get(tok_id, 0) + count
        splits[split] = {
            "records": sum(s.records.values()), "chars": sum(s.chars.values()),
            "kinds": dict(s.kinds), "by_source": by_source,
            "cyrillic_share": s.cyrillic / letters if letters else None,
            "latin_share": s.latin / letters if letters else None,
            "length_chars": _quantiles(s.lengths), "samples": s.samples,
        }
    report = {"dataset": str(layout.root), "splits": splits, "tokens": tokens,
              "source_tokens": source_tokens,
              "encodings": dict(encodings), "mojibake_lines_repaired": repaired,
              "skipped": skipped, "dedupe_and_scrub": stats}
    return report, {split: s.lengths for split, s in summaries.items()}


def _quantiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, math.floor(p * (len(ordered) - 1) + 0.5))])

    return {"min": float(ordered[0]), "p50": q(0.5), "p90": q(0.9), "max": float(ordered[-1]),
            "mean": sum(ordered) / len(ordered)}


def write_report(root: Path, report: dict[str, Any], lengths: dict[str, list[int]],
                 html: bool = True) -> list[Path]:
    """report.json, one length histogram PNG per split, and (``html``) report.html."""
    from homellm.report.html import Section, Table, html_page
    from homellm.report.plots import histogram_png

    layout = DatasetLayout(Path(root))
    layout.report.mkdir(parents=True, exist_ok=True)
    written = [layout.report / "report.json"]
    atomic_write_text(written[0], json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    images = []
    for split, values in lengths.items():
        png = histogram_png([math.log10(v) for v in values if v > 0],
                            title=f"{split}: record length", xlabel="log10(characters)")
        path = layout.report / f"lengths-{split}.png"
        atomic_write_bytes(path, png)
        written.append(path)
        images.append((f"{split}: record lengths (log10 characters)", png))
    if html:
        rows = [(split, info["records"], info["chars"],
                 ", ".join(f"{k} {v}" for k, v in info["kinds"].items()),
                 f"{(info['cyrillic_share'] or 0):.1%}",
                 *[report["tokens"].get(t, {}).get(split, "") for t in report["tokens"]])
                for split, info in report["splits"].items()]
        headers = ["split", "records", "characters", "kinds", "Cyrillic letters",
                   *[f"tokens ({t})" for t in report["tokens"]]]
        sources = [(split, src, v["records"], v["chars"],
                    *[v["tokens"].get(t, "") for t in report["tokens"]])
                   for split, info in report["splits"].items()
                   for src, v in info["by_source"].items()]
        samples = [Section(f"samples: {split}", paragraphs=info["samples"])
                   for split, info in report["splits"].items()]
        cleaning = [f"encodings: {report['encodings']}",
                    f"mojibake lines repaired: {report['mojibake_lines_repaired']}",
                    f"skipped: {report['skipped']}",
                    "deduplication and scrubbing: "
                    + json.dumps(report["dedupe_and_scrub"], ensure_ascii=False)[:3000]]
        page = html_page(f"dataset {layout.root.name}", [
            Section("splits", tables=[Table(headers, rows)], images=images),
            Section("by source", tables=[Table(["split", "source", "records", "characters",
                                                *[f"tokens ({t})" for t in report["tokens"]]],
                                               sources)]),
            Section("cleaning", paragraphs=cleaning), *samples])
        path = layout.report / "report.html"
        atomic_write_text(path, page)
        written.append(path)
    return written
