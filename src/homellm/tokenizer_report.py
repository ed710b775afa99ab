"""`homellm tokenizer report`: how well tokenizers compress the validation split, per source.

Measured on plain text (a document's text; a conversation's turn texts joined by newlines, no
chat markup, so tokenizers without ChatML tokens compare fairly), encoded without added
special tokens. ``bytes`` is the baseline of one token per UTF-8 byte. Words are
whitespace-separated. The split is read in file order up to ``max_bytes`` of text.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homellm.data.layout import DatasetLayout
from homellm.tokenizer import TokenizerError, iter_records, load_tokenizer, record_text

BYTES = "bytes"
ALL = "(all)"
DEFAULT_MAX_BYTES = 64 << 20
_BATCH = 1024


@dataclass
class Row:
    tokenizer: str
    source: str
    bytes: int
    chars: int
    words: int
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens if self.tokens else 0.0

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_token": round(self.bytes_per_token, 4),
                "chars_per_token": round(self.chars_per_token, 4),
                "tokens_per_word": round(self.tokens_per_word, 4)}


@dataclass
class Report:
    split: str
    rows: list[Row] = field(default_factory=list)

    def row(self, tokenizer: str, source: str = ALL) -> Row:
        return next(r for r in self.rows if r.tokenizer == tokenizer and r.source == source)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "rows": [r.to_json() for r in self.rows]}

    def table(self) -> str:
        head = ("tokenizer", "source", "bytes/token", "chars/token", "tokens/word", "tokens")
        body = [(r.tokenizer, r.source, f"{r.bytes_per_token:.3f}", f"{r.chars_per_token:.3f}",
                 f"{r.tokens_per_word:.3f}", str(r.tokens)) for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(line, widths, strict=True)))
                 for line in [head, *body]]
        return "\n".join(lines)


def _texts_by_source(path: Path, max_bytes: int | None) -> dict[str, list[str]]:
    by_source: dict[str, list[str]] = defaultdict(list)
    total = 0
    for record in iter_records(path):
        text = record_text(record)
        if not text:
            continue
        by_source[record.source].append(text)
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break
    return dict(sorted(by_source.items()))


def tokenizer_report(layout: DatasetLayout | Path | str, tokenizers: dict[str, Path | str], *,
                     split: str = "val", max_bytes: int | None = DEFAULT_MAX_BYTES) -> Report:
    """Bytes/token, chars/token and tokens/word for each named tokenizer folder and bytes."""
    if not isinstance(layout, DatasetLayout):
        layout = DatasetLayout(Path(layout))
    path = layout.split_file(split)
    if not path.is_file():
        raise TokenizerError(f"{path}: no {split} split (run `homellm data split` first)")
    if BYTES in tokenizers:
        raise TokenizerError(f"the name {BYTES!r} is the byte baseline's: pick another")
    by_source = _texts_by_source(path, max_bytes)
    sizes = {src: (sum(len(t.encode("utf-8")) for t in texts), sum(len(t) for t in texts),
                   sum(len(t.split()) for t in texts)) for src, texts in by_source.items()}
    report = Report(split)
    loaded = {name: load_tokenizer(folder) for name, folder in tokenizers.items()}
    for name in [BYTES, *loaded]:
        rows = []
        for source, texts in by_source.items():
            if name == BYTES:
                count = sizes[source][0]
            else:
                tok = loaded[name]
                tok.encode_special_tokens = True
                count = sum(len(enc) for i in range(0, len(texts), _BATCH)
                            for enc in tok.encode_batch_fast(texts[i:i + _BATCH],
                                                             add_special_tokens=False))
            rows.append(Row(name, source, *sizes[source], count))
        total = Row(name, ALL, *(sum(getattr(r, f) for r in rows)
                                 for f in ("bytes", "chars", "words", "tokens")))
        report.rows += [*rows, total]
    return report

