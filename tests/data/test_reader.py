"""data/reader.py: random access, seeded windows, exact resume, verification on open."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from homellm.data.reader import ShardSet, WindowLoader
from homellm.data.shards import MANIFEST, ShardError, tokenize_dataset
from homellm.tokenizer import train_tokenizer
from tests.data.tokcorpus import write_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout, _ = write_dataset(tmp_path_factory.mktemp("ds"), count=60)
    tok = train_tokenizer(layout, tmp_path_factory.mktemp("tok") / "tok", vocab_size=600)
    return tokenize_dataset(layout, tok, shard_tokens=300)


def _all(folder: Path, suffix: str, dtype: type) -> np.ndarray:
    return np.concatenate([np.fromfile(p, dtype) for p in sorted(folder.glob(f"train-*.{suffix}"))])


def test_random_access_matches_the_concatenated_shards(folder: Path) -> None:
    shards = ShardSet.open(folder, "train", verify="sha256")
    tokens, mask = _all(folder, "bin", np.uint16), _all(folder, "mask", np.uint8)
    assert len(shards) == len(tokens) > 1000
    rng = np.random.default_rng(0)
    for start in [0, 299, 300, 599, *rng.integers(0, len(tokens) - 700, 30).tolist()]:
        stop = start + int(rng.integers(0, 700))
        assert np.array_equal(shards.tokens(start, stop), tokens[start:stop])
        assert np.array_equal(shards.mask(start, stop), mask[start:stop])
    view = shards.tokens(310, 400)
    assert isinstance(view.base, np.memmap) or isinstance(view, np.memmap)  # zero-copy
    with pytest.raises(IndexError):
        shards.tokens(0, len(shards) + 1)


def test_document_starts_inside_a_window(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    eot = shards.eot_id
    tokens = shards.tokens(0, len(shards))
    expected = np.concatenate([[0], np.flatnonzero(tokens[:-1] == eot) + 1])
    assert np.array_equal(shards.doc_start_offsets, expected)
    starts = shards.doc_starts(250, 900)
    assert np.array_equal(starts, expected[(expected >= 250) & (expected < 900)] - 250)


def test_windows_are_seeded_and_cover_each_window_once(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    one = WindowLoader(shards, seq_len=32, batch_size=4, seed=1)
    assert np.array_equal(one.order(0), WindowLoader(shards, 32, 4, seed=1).order(0))
    assert not np.array_equal(one.order(0), WindowLoader(shards, 32, 4, seed=2).order(0))
    assert not np.array_equal(one.order(0), one.order(1))
    assert sorted(one.order(0).tolist()) == list(range(one.n_windows))
    batch = one.next_batch()
    assert batch.tokens.shape == batch.mask.shape == (4, 33)
    for row, window in enumerate(batch.windows.tolist()):
        at = window * 32
        assert np.array_equal(batch.tokens[row], shards.tokens(at, at + 33))
        assert np.array_equal(batch.doc_starts[row], shards.doc_starts(at, at + 33))
    ranks = [WindowLoader(shards, 32, 4, seed=1, rank=r, world_size=2) for r in (0, 1)]
    seen = [set(loader.next_batch().windows.tolist()) for loader in ranks]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(one.order(0)[:8].tolist())


def test_state_round_trip_yields_the_identical_next_batch(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    first = WindowLoader(shards, seq_len=64, batch_size=3, seed=7)
    per_epoch = first.n_windows // 3
    for _ in range(per_epoch + 1):  # across an epoch boundary
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 1 and state["index"] == 3
    expected = [first.next_batch() for _ in range(2)]
    second = WindowLoader(shards, seq_len=64, batch_size=3, seed=7)
    second.load_state_dict(state)
    for batch in expected:
        got = second.next_batch()
        assert np.array_equal(got.windows, batch.windows)
        assert np.array_equal(got.tokens, batch.tokens)
        assert np.array_equal(got.mask, batch.mask)
    with pytest.raises(ShardError, match="seed=7"):
        WindowLoader(shards, seq_len=64, batch_size=3, seed=8).load_state_dict(state)


def test_a_truncated_or_corrupt_shard_is_named(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tokens"
    shutil.copytree(folder, copy)
    path = copy / "train-00002.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ShardError) as err:
        ShardSet.open(copy, "train")
    assert "train-00002.bin" in str(err.value) and "\n" not in str(err.value)
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    ShardSet.open(copy, "train")  # same size: the fast check passes
    with pytest.raises(ShardError, match=r"train-00002\.bin: sha256"):
        ShardSet.open(copy, "train", verify="sha256")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["splits"]["val"]["complete"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="incomplete"):
        ShardSet.open(copy, "val")
    with pytest.raises(ShardError, match=r"no manifest\.json"):
        ShardSet.open(tmp_path, "train")


def _window_kinds(shards: ShardSet, seq_len: int, n_windows: int) -> list[str]:
    """Each window's source kind, found by counting <|endoftext|> before its first target
    (every document ends with exactly one)."""
    tokens = shards.tokens(0, len(shards))
    before = np.concatenate([[0], np.cumsum(tokens == shards.eot_id)])
    docs = before[np.arange(n_windows) * seq_len + 1]
    return [shards.sources[i]["kind"] for i in shards.doc_sources[docs].tolist()]


def test_sources_of_documents_and_windows(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    assert sorted(s["name"] for s in shards.sources) == ["book0.txt", "book1.txt", "chats.sql"]
    assert len(shards.doc_sources) == len(shards.doc_start_offsets)
    assert sum(shards.source_tokens.values()) == len(shards)
    loader = WindowLoader(shards, seq_len=16, batch_size=4)
    kinds = _window_kinds(shards, 16, loader.n_windows)
    assert [shards.sources[i]["kind"] for i in loader.window_sources] == kinds
    assert {loader.window_source(w)["kind"] for w in range(loader.n_windows)} == {
        "books", "dialogues"}
    batch = loader.next_batch()
    assert [shards.sources[i]["kind"] for i in batch.sources] == [
        kinds[w] for w in batch.windows]


def test_mix_of_books_only_serves_book_windows_once_per_group_epoch(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    loader = WindowLoader(shards, 16, 4, seed=3, mix={"books": 1, "dialogues": 0})
    kinds = _window_kinds(shards, 16, loader.n_windows)
    books = {w for w, kind in enumerate(kinds) if kind == "books"}
    per_epoch = len(books) // 4 * 4
    batches = [loader.next_batch() for _ in range(2 * per_epoch // 4 + 3)]
    windows = np.concatenate([b.windows for b in batches]).tolist()
    assert {kinds[w] for w in windows} == {"books"}
    assert all(shards.sources[i]["kind"] == "books" for b in batches for i in b.sources)
    first, second = windows[:per_epoch], windows[per_epoch:2 * per_epoch]
    assert len(set(first)) == len(set(second)) == per_epoch and set(first) <= books
    assert first != second  # the next epoch of the group is reshuffled
    row = batches[5].windows[0] * 16
    assert np.array_equal(batches[5].tokens[0], shards.tokens(row, row + 17))
    assert np.array_equal(batches[5].mask[0], shards.mask(row, row + 17))


def test_mix_weights_set_the_shares(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    for mix, key, share in (({"books": 0.5, "dialogues": 0.5}, "books", 0.5),
                            ({"books": 0.8, "chats.sql": 0.2}, "books", 0.8)):
        loader = WindowLoader(shards, 16, 4, seed=11, mix=mix)
        kinds = _window_kinds(shards, 16, loader.n_windows)
        windows = np.concatenate([loader.next_batch().windows for _ in range(500)])
        served = sum(kinds[w] == key for w in windows.tolist()) / len(windows)
        assert abs(served - share) < 0.04, (mix, served)


def test_mix_resume_and_ranks(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    mix = {"books": 0.7, "dialogues": 0.3}
    first = WindowLoader(shards, 16, 3, seed=5, mix=mix)
    for _ in range(120):  # into both groups' second epoch
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert state["step"] == 120 and all(e >= 1 and at > 0 for e, at in state["cursors"])
    expected = [first.next_batch() for _ in range(8)]
    second = WindowLoader(shards, 16, 3, seed=5, mix=mix)
    second.load_state_dict(state)
    for batch in expected:
        got = second.next_batch()
        assert np.array_equal(got.windows, batch.windows)
        assert np.array_equal(got.tokens, batch.tokens)
        assert np.array_equal(got.sources, batch.sources)
    with pytest.raises(ShardError, match="mix"):
        WindowLoader(shards, 16, 3, seed=5).load_state_dict(state)
    with pytest.raises(ShardError, match="mix"):
        WindowLoader(shards, 16, 3, seed=5, mix={"books": 1}).load_state_dict(state)
    ranks = [WindowLoader(shards, 16, 4, seed=5, rank=r, world_size=2, mix=mix) for r in (0, 1)]
    whole = WindowLoader(shards, 16, 8, seed=5, mix=mix)
    for _ in range(60):
        a, b = (set(loader.next_batch().windows.tolist()) for loader in ranks)
        assert len(a) == len(b) == 4 and not a & b
        assert a | b == set(whole.next_batch().windows.tolist())


def test_mix_keys_are_checked(folder: Path) -> None:
    shards = ShardSet.open(folder, "train")
    with pytest.raises(ShardError, match=r"'poetry'.*books, dialogues.*book0\.txt"):
        WindowLoader(shards, 16, 4, mix={"books": 1, "poetry": 1})
    with pytest.raises(ShardError, match=r"keys 'book0\.txt' and 'books'"):
        WindowLoader(shards, 16, 4, mix={"books": 1, "book0.txt": 1})
    with pytest.raises(ShardError, match="weight 0"):
        WindowLoader(shards, 16, 4, mix={"books": 0})
    with pytest.raises(ShardError, match="fewer than one step"):
        WindowLoader(shards, 16, 100, mix={"dialogues": 1})


def test_an_older_format_or_a_bad_source_file_is_refused(folder: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tokens"
    shutil.copytree(folder, copy)
    src = copy / "train-00001.src"
    data = src.read_bytes()
    src.write_bytes(data[:-4])
    with pytest.raises(ShardError, match=r"train-00001\.src: .* bytes, manifest says"):
        ShardSet.open(copy, "train")
    src.unlink()
    with pytest.raises(ShardError, match=r"train-00001\.src: missing"):
        ShardSet.open(copy, "train")
    src.write_bytes(np.full(len(data) // 4, 7, np.uint32).tobytes())
    with pytest.raises(ShardError, match=r"train-00001\.src: a source index past"):
        ShardSet.open(copy, "train")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format"] = "homellm-shards-v1"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="re-run `homellm data tokenize`"):
        ShardSet.open(copy, "val")
