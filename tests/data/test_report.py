"""`homellm data report` on a dataset folder written by hand: counts per split and source,
the Cyrillic share, PNG histograms and one self-contained HTML page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from homellm.data.layout import DatasetLayout
from homellm.data.records import Conversation, Document, Turn


def write_dataset(root: Path) -> DatasetLayout:
    layout = DatasetLayout(root)
    layout.splits.mkdir(parents=True)
    train = [Document("b-0", "/x/book.fb2", "Слово было у Бога. " * 20, title="Книга"),
             Conversation("c-1", "/x/chats.sql", [Turn("user", "Привет"),
                                                  Turn("assistant", "Hello there")])]
    val = [Document("b-1", "/x/book.fb2", "Короткий текст")]
    for split, records in (("train", train), ("val", val), ("test", [])):
        layout.split_file(split).write_text(
            "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records),
            "utf-8")
    layout.manifest.write_text(json.dumps({"inputs": {"a": {"encodings": {"cp1251": 1},
                                                            "repaired": 3, "skipped": 0}}}))
    return layout


def test_report_counts_pictures_and_html(tmp_path: Path) -> None:
    layout = write_dataset(tmp_path / "ds")
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "data", "report",
                           str(layout.root), "--json"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    train = report["splits"]["train"]
    assert train["records"] == 2 and train["kinds"] == {"document": 1, "conversation": 1}
    assert train["by_source"]["chats.sql"]["chars"] == len("Привет\nHello there")
    # "Привет" is 6 Cyrillic letters, "Hello there" 10 Latin ones, the book all Cyrillic
    book_letters = sum(ch.isalpha() for ch in "Слово было у Бога. " * 20)
    assert train["cyrillic_share"] == (book_letters + 6) / (book_letters + 6 + 10)
    assert report["splits"]["test"]["records"] == 0
    assert report["mojibake_lines_repaired"] == 3 and report["encodings"] == {"cp1251": 1}
    html = (layout.report / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") == 3  # a histogram per split (test: "no data")
    assert (layout.report / "lengths-train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_splits_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "data", "report",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "data ingest" in done.stdout + done.stderr
