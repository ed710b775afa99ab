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
    assert report["tokens"] == report["source_tokens"] == {}  # no shards yet
    assert train["by_source"]["book.fb2"]["tokens"] == {}
    assert report["mojibake_lines_repaired"] == 3 and report["encodings"] == {"cp1251": 1}
    html = (layout.report / "report.html").read_text("utf-8")
    assert html.count("data:image/png;base64,") == 3  # a histogram per split (test: "no data")
    assert (layout.report / "lengths-train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_tokens_per_split_and_source(tmp_path: Path) -> None:
    from homellm.data.shards import tokenize_dataset
    from homellm.tokenizer import load_tokenizer, train_tokenizer

    layout = write_dataset(tmp_path / "ds")
    tok_dir = train_tokenizer(layout, tmp_path / "tok", vocab_size=300)
    folder = tokenize_dataset(layout, tok_dir)
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "data", "report",
                           str(layout.root), "--json"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    report, tok_id = json.loads(done.stdout), folder.name
    tok = load_tokenizer(tok_dir)
    book = len(tok.encode("Слово было у Бога. " * 20, add_special_tokens=False).ids) + 1
    total = report["tokens"][tok_id]["train"]
    train = report["source_tokens"][tok_id]["train"]
    assert train == {"/x/book.fb2": book, "/x/chats.sql": total - book} and total - book > 5
    by_source = report["splits"]["train"]["by_source"]
    assert by_source["book.fb2"]["tokens"] == {tok_id: book}
    assert by_source["chats.sql"]["tokens"] == {tok_id: total - book}
    val = report["splits"]["val"]["by_source"]["book.fb2"]
    assert val["tokens"][tok_id] == report["tokens"][tok_id]["val"]
    assert report["source_tokens"][tok_id]["test"] == {}
    html = (layout.report / "report.html").read_text("utf-8")
    assert f"tokens ({tok_id})" in html and f"<td class=\"n\">{book}</td></tr>" in html


def test_report_without_splits_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "data", "report",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "data ingest" in done.stdout + done.stderr


def test_report_console_shows_tokens_per_source(tmp_path: Path) -> None:
    from homellm.data.shards import tokenize_dataset
    from homellm.tokenizer import load_tokenizer, train_tokenizer

    layout = write_dataset(tmp_path / "ds")
    tok_dir = train_tokenizer(layout, tmp_path / "tok", vocab_size=300)
    tok_id = tokenize_dataset(layout, tok_dir).name
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "data", "report",
                           str(layout.root), "--no-html"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"tokens per source ({tok_id})" in done.stdout
    manifest = json.loads((layout.root / "tokens" / tok_id / "manifest.json").read_text())
    counts = {split: info["sources"] for split, info in manifest["splits"].items()}
    book_val = len(load_tokenizer(tok_dir).encode("Короткий текст",
                                                  add_special_tokens=False).ids) + 1
    assert counts["val"] == {"/x/book.fb2": book_val}
    for name, source in (("book.fb2", "/x/book.fb2"), ("chats.sql", "/x/chats.sql")):
        row = [line for line in lines if f" {name} " in line]
        assert len(row) == 1, done.stdout
        cells = [c.strip() for c in row[0].replace("│", "|").split("|") if c.strip()]
        expected = [f"{counts[split][source]:,}" if source in counts[split] else "—"
                    for split in ("train", "val", "test")]
        assert cells == [name, *expected], row[0]
