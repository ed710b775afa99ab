"""Report files (PNG, self-contained HTML) and the terminal views."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from homellm.bench.compare import compare_results
from homellm.bench.records import RequestRecord
from homellm.bench.render import render_compare, render_summary
from homellm.bench.report import report_html, sweep_png, write_report
from homellm.bench.result import BenchCard, RunInfo, build_result
from tests.bench.test_metrics import closed_loop, sample_run

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result_at(concurrency: int, scale: float = 1.0, complete: bool = True) -> dict:
    records = [RequestRecord(r.index, r.scheduled_at * scale, r.sent_at * scale,
                             r.first_at * scale if r.first_at is not None else None,
                             [t * scale for t in r.chunk_times], output_tokens=r.output_tokens,
                             token_source=r.token_source, prompt_tokens=r.prompt_tokens)
               for r in closed_loop()]
    return build_result(records, RunInfo(0.0, 3.5 * scale, max_concurrency=concurrency,
                                         complete=complete), BenchCard(model="tiny <model>"))


def test_write_report_files(tmp_path: Path) -> None:
    records = sample_run()
    res = build_result(records, RunInfo(0.0, 4.0, max_concurrency=2), BenchCard(model="m"))
    sweep = [result_at(1), result_at(2, 1.5), result_at(4, 2.0)]
    written = write_report(res, tmp_path / "out", records=records, started_at=0.0, sweep=sweep)
    assert set(written) == {"json", "jsonl", "csv", "png_ttft", "png_tpot", "png_throughput",
                            "png_sweep", "html"}
    for key, path in written.items():
        assert path.exists() and path.parent == tmp_path / "out"
        if key.startswith("png_"):
            assert path.read_bytes()[:8] == PNG_MAGIC
    html = written["html"].read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4  # TTFT, TPOT, throughput, sweep: embedded, nothing linked
    assert "http" not in html.replace("http_5xx", "")  # self-contained: no external resource
    assert "http_5xx" in html  # failures by kind are in the summary


def test_report_for_zero_successes_and_partial_runs(tmp_path: Path) -> None:
    failed = [r for r in sample_run() if r.error_kind]
    res = build_result(failed, RunInfo(0.0, 4.0, complete=False), None)
    written = write_report(res, tmp_path, stem="partial")
    assert written["png_ttft"].read_bytes()[:8] == PNG_MAGIC  # an empty figure, not a crash
    assert "Partial result" in written["html"].read_text()
    empty = build_result([], RunInfo(1.0, 1.0, complete=False))
    assert write_report(empty, tmp_path, stem="empty")["html"].exists()


def test_html_escapes_text() -> None:
    html = report_html(result_at(2), {})
    assert "tiny &lt;model&gt;" in html and "tiny <model>" not in html


def test_sweep_png_tolerates_missing_points() -> None:
    assert sweep_png([result_at(2), build_result([], RunInfo(0.0, 0.0))])[:8] == PNG_MAGIC
    assert sweep_png([])[:8] == PNG_MAGIC


def test_render_summary_and_compare() -> None:
    res = build_result(sample_run(), RunInfo(0.0, 4.0, max_concurrency=2), BenchCard(model="m"),
                       slos={"ttft": 0.15})
    console = Console(record=True, width=160)
    render_summary(res, console)
    text = console.export_text()
    for needle in ("successful requests", "TTFT", "TPOT", "ITL per token", "send lag",
                   "http_5xx", "request goodput", "usage 2, tokenizer 1"):
        assert needle in text
    partial = build_result([], RunInfo(0.0, 0.0, complete=False))
    render_summary(partial, console)
    assert "partial" in console.export_text()
    render_compare(compare_results(res, result_at(2), a_name="base", b_name="new"), console)
    text = console.export_text()
    assert "base" in text and "new" in text and "Mann-Whitney" in text
