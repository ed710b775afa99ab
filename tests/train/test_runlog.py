"""The run log: append/read round trip, torn last lines, corrupt middle lines, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from homellm.errors import HomellmError
from homellm.train.runlog import FILENAME, RunLog


def train_row(step: int) -> dict:
    return {"kind": "train", "step": step, "tokens": 1024 * step, "loss": 5.0 - step / 100,
            "lr": 3e-4, "grad_norm": None, "tokens_per_s": 1000.0 + step, "mfu": None,
            "memory_gib": None, "seq_len": 256, "stage": 0}


def test_round_trip_keeps_rows_and_adds_time(tmp_path: Path) -> None:
    rows = [train_row(1), {"kind": "sample", "step": 1, "prompt": "Привет", "text": "мир\n<b>"},
            {"kind": "event", "step": 2, "message": "checkpoint saved", "time": 12.5}]
    with RunLog(tmp_path) as log:
        for r in rows:
            log.append(r)
    got = RunLog.read(tmp_path)
    assert len(got) == 3
    for want, row in zip(rows, got, strict=True):
        assert {k: row[k] for k in want} == want
        assert isinstance(row["time"], float)
    assert got[2]["time"] == 12.5
    text = (tmp_path / FILENAME).read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 3 and "Привет" in text


def test_read_without_log_is_empty(tmp_path: Path) -> None:
    assert RunLog.read(tmp_path) == []


def test_append_rejects_rows_without_kind_or_int_step(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        log.append({"kind": "bogus", "step": 1})
    with pytest.raises(ValueError, match="step"):
        log.append({"kind": "train", "step": 1.5})
    log.close()


def test_torn_last_line_is_skipped_then_cut_before_the_next_append(tmp_path: Path) -> None:
    with RunLog(tmp_path) as log:
        log.append(train_row(1))
        log.append(train_row(2))
    path = tmp_path / FILENAME
    whole = json.dumps(train_row(3))
    path.write_bytes(path.read_bytes() + whole[: len(whole) // 2].encode())
    assert [r["step"] for r in RunLog.read(tmp_path)] == [1, 2]
    with RunLog(tmp_path) as log:  # a resumed run appends after the crash
        log.append(train_row(3))
    assert [r["step"] for r in RunLog.read(tmp_path)] == [1, 2, 3]


def test_complete_last_row_missing_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    path.write_text(json.dumps(train_row(1)), encoding="utf-8")
    with RunLog(tmp_path) as log:
        log.append(train_row(2))
    assert [r["step"] for r in RunLog.read(tmp_path)] == [1, 2]


def test_corrupt_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / FILENAME
    lines = [json.dumps(train_row(1)), "{not json", json.dumps(train_row(3))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(HomellmError, match=rf"{FILENAME}:2:"):
        RunLog.read(tmp_path)
    path.write_text(json.dumps(train_row(1)) + "\n[1, 2]\n" + json.dumps(train_row(3)) + "\n",
                    encoding="utf-8")
    with pytest.raises(HomellmError, match=rf"{FILENAME}:2:"):
        RunLog.read(tmp_path)


def test_truncate_after_keeps_exactly_steps_up_to_s(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    for step in range(1, 11):
        log.append(train_row(step))
        if step % 3 == 0:
            log.append({"kind": "event", "step": step, "message": "checkpoint saved"})
    before = RunLog.read(tmp_path)
    assert log.truncate_after(6) == 8
    assert RunLog.read(tmp_path) == [r for r in before if r["step"] <= 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILENAME]  # no temp file left
    log.append({"kind": "event", "step": 6, "message": "resumed"})  # reopens after truncation
    log.append(train_row(7))
    log.close()
    assert [(r["kind"], r["step"]) for r in RunLog.read(tmp_path)][-3:] == \
        [("event", 6), ("event", 6), ("train", 7)]


def test_truncate_after_drops_a_torn_tail_and_is_a_no_op_without_log(tmp_path: Path) -> None:
    assert RunLog(tmp_path).truncate_after(5) == 0
    assert not (tmp_path / FILENAME).exists()
    with RunLog(tmp_path) as log:
        log.append(train_row(1))
    path = tmp_path / FILENAME
    path.write_bytes(path.read_bytes() + b'{"kind":"tr')
    assert RunLog(tmp_path).truncate_after(5) == 1
    assert path.read_bytes().endswith(b"}\n")
