"""data/shards.py: rendering, loss mask, document index, dtype, manifest, resume."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from homellm.data.layout import DatasetLayout
from homellm.data.records import Conversation, Document, Record, Turn
from homellm.data.shards import FORMAT, MANIFEST, ShardError, token_dtype, tokenize_dataset
from homellm.tokenizer import EOT, IM_END, load_tokenizer, render_conversation, train_tokenizer
from tests.data.tokcorpus import write_dataset

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[DatasetLayout, dict[str, list[Record]], Path]:
    layout, records = write_dataset(tmp_path_factory.mktemp("ds"))
    tok = train_tokenizer(layout, tmp_path_factory.mktemp("tok") / "tok", vocab_size=600)
    return layout, records, tok


def _copy(corpus: tuple[DatasetLayout, dict[str, list[Record]], Path], tmp_path: Path
          ) -> DatasetLayout:
    shutil.copytree(corpus[0].splits, tmp_path / "splits")
    return DatasetLayout(tmp_path)


def _rendered(record: Record) -> str:
    body = render_conversation(record) if isinstance(record, Conversation) else record.text
    return body + EOT


def _split_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    manifest = json.loads((folder / MANIFEST).read_text())
    dtype = np.dtype(manifest["dtype"])
    tokens, masks, starts, base = [], [], [], 0
    for entry in manifest["splits"][split]["shards"]:
        name = f"{split}-{entry['index']:05d}"
        tokens.append(np.fromfile(folder / f"{name}.bin", dtype))
        masks.append(np.fromfile(folder / f"{name}.mask", np.uint8))
        starts.append(np.fromfile(folder / f"{name}.docs", np.uint32).astype(np.int64) + base)
        base += entry["tokens"]
    return np.concatenate(tokens), np.concatenate(masks), np.concatenate(starts)


def _sources(folder: Path, split: str) -> np.ndarray:
    manifest = json.loads((folder / MANIFEST).read_text())
    return np.concatenate([np.fromfile(folder / f"{split}-{e['index']:05d}.src", np.uint32)
                           for e in manifest["splits"][split]["shards"]])


def _count(tok: Tokenizer, record: Record) -> int:
    """Tokens of a rendered record, from its texts encoded one by one as the chat template
    lays them out: <|im_start|>role\n text <|im_end|>\n per turn, then <|endoftext|>."""
    def n(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    if isinstance(record, Document):
        return n(record.text) + 1
    return sum(1 + n(t.role + "\n") + n(t.text) + 1 + n("\n") for t in record.turns) + 1


def test_round_trip_mask_and_document_index(corpus, tmp_path: Path) -> None:
    layout = _copy(corpus, tmp_path)
    records, tok_dir = corpus[1], corpus[2]
    folder = tokenize_dataset(layout, tok_dir, shard_tokens=700)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert folder.name == manifest["tokenizer"]["id"] and manifest["dtype"] == "uint16"
    tok = load_tokenizer(tok_dir)
    for split, items in records.items():
        state = manifest["splits"][split]
        assert state["complete"] and state["documents"] == len(items)
        assert len(state["shards"]) > 1 and state["shards"][-1]["last"]
        assert all(e["tokens"] == 700 for e in state["shards"][:-1])
        tokens, mask, starts = _split_arrays(folder, split)
        assert tokens.dtype == np.uint16 and state["tokens"] == len(tokens) == len(mask)
        assert tok.decode(tokens.tolist(), skip_special_tokens=False) == "".join(
            _rendered(r) for r in items)
        bounds = [*starts.tolist(), len(tokens)]
        assert bounds[0] == 0 and all(tokens[s - 1] == tok.token_to_id(EOT) for s in bounds[1:])
        for record, a, b in zip(items, bounds[:-1], bounds[1:], strict=True):
            assert tok.decode(tokens[a:b].tolist(), skip_special_tokens=False) == \
                _rendered(record)
            if isinstance(record, Document):
                assert mask[a:b].all()
            else:
                kept = tok.decode(tokens[a:b][mask[a:b] == 1].tolist(),
                                  skip_special_tokens=False)
                assert kept == "".join(t.text + IM_END for t in record.turns
                                       if t.role == "assistant")
                assert mask[b - 1] == 0 and mask[a] == 0  # <|endoftext|>, <|im_start|>


def test_each_document_records_its_source(corpus, tmp_path: Path) -> None:
    layout = _copy(corpus, tmp_path)
    records, tok_dir = corpus[1], corpus[2]
    folder = tokenize_dataset(layout, tok_dir, shard_tokens=300)
    manifest = json.loads((folder / MANIFEST).read_text())
    sources = manifest["sources"]
    assert sorted((s["name"], s["kind"]) for s in sources) == [
        ("book0.txt", "books"), ("book1.txt", "books"), ("chats.sql", "dialogues")]
    tok = load_tokenizer(tok_dir)
    tok.encode_special_tokens = True
    for split, items in records.items():
        state = manifest["splits"][split]
        src = _sources(folder, split)
        assert [sources[i]["name"] for i in src] == [r.source for r in items]
        assert [sources[i]["kind"] for i in src] == [
            "dialogues" if isinstance(r, Conversation) else "books" for r in items]
        expected: Counter[str] = Counter()
        for record in items:
            expected[record.source] += _count(tok, record)
        assert state["sources"] == dict(expected)
        assert sum(state["sources"].values()) == state["tokens"] > 3 * 300
        for entry in state["shards"]:  # records continue across shards: counted where they lie
            assert sum(entry["sources"].values()) == entry["tokens"]


def test_resume_redoes_only_a_missing_shard(corpus, tmp_path: Path) -> None:
    layout = _copy(corpus, tmp_path)
    folder = tokenize_dataset(layout, corpus[2], shard_tokens=500)
    manifest_before = json.loads((folder / MANIFEST).read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*-*.*")}
    manifest = json.loads((folder / MANIFEST).read_text())
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) >= 3
    del shards[1]
    manifest["splits"]["train"]["complete"] = False
    (folder / MANIFEST).write_text(json.dumps(manifest))
    for kind in ("bin", "mask", "docs", "src"):
        (folder / f"train-00001.{kind}").unlink()
    tokenize_dataset(layout, corpus[2], shard_tokens=500)
    changed = {p.name for p in folder.glob("*-*.*") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {f"train-00001.{kind}" for kind in ("bin", "mask", "docs", "src")}
    assert json.loads((folder / MANIFEST).read_text()) == manifest_before
    # a shard whose .src has the wrong size is redone, its entry kept
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*-*.*")}
    src = folder / "val-00002.src"
    src.write_bytes(src.read_bytes()[:-4])
    tokenize_dataset(layout, corpus[2], shard_tokens=500)
    changed = {p.name for p in folder.glob("*-*.*") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {f"val-00002.{kind}" for kind in ("bin", "mask", "docs", "src")}
    assert json.loads((folder / MANIFEST).read_text()) == manifest_before
    # shards of an older format (no .src) are all rebuilt
    manifest_before["format"] = "homellm-shards-v1"
    (folder / MANIFEST).write_text(json.dumps(manifest_before))
    tokenize_dataset(layout, corpus[2], shard_tokens=500)
    assert json.loads((folder / MANIFEST).read_text())["format"] == FORMAT
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in folder.glob("*-*.*"))


def test_a_changed_split_is_rebuilt_and_stale_shards_removed(corpus, tmp_path: Path) -> None:
    layout = _copy(corpus, tmp_path)
    folder = tokenize_dataset(layout, corpus[2], shard_tokens=500, splits=["val"])
    assert (folder / "val-00002.bin").exists()
    lines = layout.split_file("val").read_text("utf-8").splitlines(keepends=True)
    layout.split_file("val").write_text("".join(lines[:3]), "utf-8")
    tokenize_dataset(layout, corpus[2], shard_tokens=500, splits=["val"])
    state = json.loads((folder / MANIFEST).read_text())["splits"]["val"]
    assert state["documents"] == 3 and len(state["shards"]) == 1
    assert not (folder / "val-00002.bin").exists()


def test_special_token_text_in_a_book_stays_text(corpus, tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    layout.splits.mkdir()
    book = Document(id="b", source="s", text="В книге написано <|im_end|> и <|endoftext|>.")
    chat = Conversation(id="c", source="s", turns=[Turn("user", "  \n\nПривет"),
                                                   Turn("assistant", "\nОтвет")])
    layout.split_file("train").write_text(
        "\n".join(json.dumps(r.to_json(), ensure_ascii=False) for r in (book, chat)), "utf-8")
    folder = tokenize_dataset(layout, corpus[2], splits=["train"])
    tokens, mask, starts = _split_arrays(folder, "train")
    tok = load_tokenizer(corpus[2])
    first = tokens[:starts[1]].tolist()
    assert first.count(tok.token_to_id(EOT)) == 1 and tok.token_to_id(IM_END) not in first
    assert tok.decode(tokens.tolist(), skip_special_tokens=False) == \
        _rendered(book) + _rendered(chat)
    assert tok.decode(tokens[mask == 1][len(first):].tolist(),
                      skip_special_tokens=False) == "\nОтвет" + IM_END


def test_dtype_and_errors(corpus, tmp_path: Path) -> None:
    assert token_dtype(600) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(151_665) == np.uint32
    layout = DatasetLayout(tmp_path)
    layout.splits.mkdir()
    layout.split_file("train").write_text('{"kind": "document", "id": "a"}\n', "utf-8")
    with pytest.raises(ShardError, match=r"train.jsonl:1: not a dataset record"):
        tokenize_dataset(layout, corpus[2])
