"""The training report: figures as files and inline, the summary's figures, escaping."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from homellm.train.report import MAX_POINTS, _thin, summary, write_report
from homellm.train.runlog import RunLog

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL = {"loss", "bpb", "throughput", "memory", "loss_by_position", "needle"}


def synthetic_rows(gpu: bool = True) -> list[dict]:
    rows: list[dict] = [{"kind": "event", "step": 0, "message": "started", "time": 1000.0}]
    for step in range(1, 51):
        rows.append({"kind": "train", "step": step, "time": 1000.0 + step, "tokens": 512 * step,
                     "loss": 6.0 - 0.05 * step, "lr": 1e-3, "grad_norm": 1.0 if gpu else None,
                     "tokens_per_s": 100.0 * step, "mfu": 0.001 * step if gpu else None,
                     "memory_gib": 2.0 + step / 100 if gpu else None, "seq_len": 128,
                     "stage": 0 if step < 25 else 1})
        if step % 20 == 0 or step == 50:  # 3 evals per split, the val minimum in the middle
            val = {20: 4.2, 40: 3.9, 50: 4.0}[step]
            for split, loss in (("val", val), ("test", val + 0.1)):
                rows.append({"kind": "eval", "step": step, "time": 1000.0 + step, "split": split,
                             "loss": loss, "ppl": 2.718 ** loss, "bpb": loss / 3,
                             "bpc": loss / 1.5, "tokens": 4096})
    for step in (25, 50):
        for split in ("val", "test"):
            rows.append({"kind": "positions", "step": step, "split": split, "bucket": 16,
                         "loss": [5.0 - i / 10 for i in range(8)], "time": 1000.0})
        for length in (64, 128):
            for depth in (0.0, 0.5, 1.0):
                rows.append({"kind": "needle", "step": step, "length": length, "depth": depth,
                             "accuracy": 0.25 + depth / 2, "trials": 10, "chance": 0.125,
                             "time": 1000.0})
    rows.append({"kind": "event", "step": 25, "message": "stage 1: seq_len 128", "time": 1025.0})
    rows += [{"kind": "sample", "step": 50, "prompt": "Жили-были",
              "text": "<script>alert(1)</script>", "time": 1050.0},
             {"kind": "sample", "step": 10, "prompt": "old", "text": "stale sample text",
              "time": 1010.0}]
    return rows


def write_log(run: Path, rows: list[dict]) -> None:
    with RunLog(run) as log:
        for r in rows:
            log.append(r)


def test_summary_matches_the_rows_by_hand() -> None:
    rows = synthetic_rows()
    s = summary(rows)
    assert s["steps"] == 50 and s["train_rows"] == 50 and s["tokens"] == 512 * 50
    assert s["last_train_loss"] == pytest.approx(6.0 - 0.05 * 50)
    assert s["best_val_loss"] == 3.9 and s["best_val_loss_step"] == 40
    assert s["best_val_bpb"] == pytest.approx(3.9 / 3) and s["best_val_bpb_step"] == 40
    assert s["best_val_bpc_step"] == 40
    assert s["test"]["step"] == 50 and s["test"]["loss"] == pytest.approx(4.1)
    # last 20% of 50 train rows = steps 41..50
    assert s["mean_tokens_per_s_last20"] == pytest.approx(sum(100.0 * k for k in range(41, 51))
                                                          / 10)
    assert s["mean_mfu_last20"] == pytest.approx(sum(0.001 * k for k in range(41, 51)) / 10)
    assert s["peak_memory_gib"] == pytest.approx(2.5)
    assert s["wall_s"] == pytest.approx(50.0)


def test_report_writes_inline_and_file_pngs_and_escapes_samples(tmp_path: Path) -> None:
    write_log(tmp_path, synthetic_rows())
    page = write_report(tmp_path, title="run <x>")
    assert page == tmp_path / "report" / "index.html"
    html = page.read_text(encoding="utf-8")
    inline = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(inline) == len(ALL)
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in inline)
    for name in ALL:
        assert (tmp_path / "report" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "run &lt;x&gt;" in html and "Жили-были" in html
    assert "stale sample text" not in html  # only the latest step's samples
    assert "stage 1: seq_len 128" in html and "chance level 0.125" in html
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == \
        sorted(["index.html", *(f"{n}.png" for n in ALL)])  # atomic writes leave no temp file


def test_report_without_gpu_fields_or_evals(tmp_path: Path) -> None:
    rows = [r for r in synthetic_rows(gpu=False) if r["kind"] in ("train", "event")][:4]
    write_log(tmp_path, rows)
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert len(re.findall("data:image/png;base64,", html)) == 2
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"loss.png",
                                                                      "throughput.png"}
    s = summary(rows)
    assert s["best_val_loss"] is None and s["test"] is None and s["mean_mfu_last20"] is None
    assert s["peak_memory_gib"] is None and s["steps"] == 3


def test_stale_figures_go_when_the_log_is_truncated(tmp_path: Path) -> None:
    write_log(tmp_path, synthetic_rows())
    write_report(tmp_path)
    RunLog(tmp_path).truncate_after(10)
    write_report(tmp_path)
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"loss.png", "memory.png",
                                                                      "throughput.png"}


def test_empty_log_says_no_steps_yet(tmp_path: Path) -> None:
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No steps yet" in html and "data:image" not in html
    assert summary([])["steps"] is None
    write_log(tmp_path, [{"kind": "event", "step": 0, "message": "started"}])
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No steps yet" in html and "started" in html


def test_thin_averages_long_series_down_and_drops_non_finite() -> None:
    n = 10 * MAX_POINTS + 7
    xs, ys = _thin(list(range(n)), [float(i) if i != 5 else None for i in range(n)])
    assert len(xs) <= MAX_POINTS and xs[0] < 10 and xs[-1] > n - 20
    assert ys == pytest.approx(xs)  # y == x, so each bucket's means agree
    assert _thin([1, 2], [float("nan"), 3.0]) == ([2.0], [3.0])
