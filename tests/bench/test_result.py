"""The result JSON (vLLM field names, round trip, partial runs) and the per-request files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from homellm.bench.records import RequestRecord
from homellm.bench.result import (
    CSV_COLUMNS,
    BenchCard,
    RunInfo,
    build_result,
    load_result,
    read_records_jsonl,
    records_csv,
    save_result,
    write_records_csv,
    write_records_jsonl,
)
from homellm.errors import HomellmError
from tests.bench.test_metrics import sample_run

#: keys of ``vllm bench serve``'s result JSON (vllm/benchmarks/serve.py) that we fill
VLLM_KEYS = (
    "date", "endpoint_type", "label", "model_id", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
    "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
    "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "latencies",
    "start_times", "errors", "max_output_tokens_per_s", "max_concurrent_requests",
    "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
    "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2el_ms", "p99_e2el_ms",
)

CARD = BenchCard(endpoint="http://127.0.0.1:8080/v1/chat/completions", api="chat", model="m",
                 server_version="0.33.0", dataset="random", seed=7,
                 client_host={"hostname": "h", "cpu_count": 16, "python": "3.11.2"},
                 client_overhead={"loop_lag_p99_ms": 0.4})


def run_info(**kw: object) -> RunInfo:
    return RunInfo(started_at=0.0, ended_at=4.0, max_concurrency=2, num_prompts=6,
                   **kw)  # type: ignore[arg-type]


def test_fields_and_values() -> None:
    res = build_result(sample_run(), run_info(), CARD, slos={"ttft": 0.15})
    missing = [k for k in VLLM_KEYS if k not in res]
    assert not missing
    assert res["complete"] is True
    assert (res["model_id"], res["endpoint_type"], res["request_rate"]) == ("m", "chat", "inf")
    assert res["bench_card"]["client_host"]["cpu_count"] == 16
    assert res["request_goodput"] == pytest.approx(0.5)  # 2 good / 4 s (test_metrics)
    # per-request arrays in index order, null where a failed request has no value
    assert res["ttfts"][:3] == pytest.approx([0.1, 0.2, 0.05]) and res["ttfts"][3:] == [None] * 3
    assert res["tpots"][2] is None  # one output token
    assert res["output_lens"] == [4, 6, 1, 0, 0, 0]
    assert res["itls"][1] == pytest.approx([0.1]) and res["itls"][4] == []
    assert res["error_kinds"] == [None, None, None, "http_5xx", "timeout", "cancelled"]
    assert res["send_lags"][3] == pytest.approx(0.1)
    assert len(res["timeline"]["output_tokens"]) == 4


def test_json_round_trip(tmp_path: Path) -> None:
    res = build_result(sample_run(), run_info(), CARD)
    path = save_result(res, tmp_path / "r.json")
    assert load_result(path) == json.loads(json.dumps(res))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_partial_and_empty_results_write(tmp_path: Path) -> None:
    only_failures = [r for r in sample_run() if r.error_kind]
    res = build_result(only_failures, run_info(complete=False), None)
    loaded = load_result(save_result(res, tmp_path / "partial.json"))
    assert loaded["complete"] is False and loaded["completed"] == 0
    assert loaded["mean_ttft_ms"] is None and loaded["request_throughput"] == 0.0
    empty = build_result([], RunInfo(started_at=5.0, ended_at=5.0, complete=False))
    assert load_result(save_result(empty, tmp_path / "empty.json"))["num_records"] == 0


def test_non_finite_numbers_become_null(tmp_path: Path) -> None:
    res = build_result(sample_run(), run_info(request_rate=math.inf, burstiness=math.nan))
    text = (save_result(res, tmp_path / "r.json")).read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["burstiness"] is None and json.loads(text)["request_rate"] == "inf"


def test_load_result_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("[1, 2]")
    (tmp_path / "y.json").write_text("{not json")
    for name in ("x.json", "y.json", "missing.json"):
        with pytest.raises(HomellmError, match=name):
            load_result(tmp_path / name)


def test_jsonl_round_trip(tmp_path: Path) -> None:
    records = sample_run()
    path = write_records_jsonl(records, tmp_path / "r.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == len(records) and all(json.loads(line)["index"] >= 0 for line in lines)
    assert read_records_jsonl(path) == records


def test_csv_shape(tmp_path: Path) -> None:
    records = sample_run()
    rows = list(csv.DictReader(io.StringIO(records_csv(records, started_at=0.0))))
    assert len(rows) == len(records) and tuple(rows[0]) == CSV_COLUMNS
    a, d = rows[0], rows[3]
    assert (a["ok"], a["ttft_ms"], a["e2el_ms"], a["chunks"]) == ("1", "100.000", "170.000", "4")
    assert a["tpot_ms"] == "23.333" and a["send_lag_ms"] == "10.000"
    assert (d["ok"], d["error_kind"], d["ttft_ms"], d["send_lag_ms"]) == \
        ("0", "http_5xx", "", "100.000")
    written = write_records_csv(records, tmp_path / "r.csv", started_at=0.0)
    assert written.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_card_as_dict() -> None:
    res = build_result([RequestRecord(0, 0.0, 0.0, 0.1, [0.1], output_tokens=1)],
                       run_info(), {"model": "x", "api": "completions"})
    assert (res["model_id"], res["endpoint_type"]) == ("x", "completions")
