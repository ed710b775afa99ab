"""A run's result (vLLM-compatible JSON plus our additions) and the per-request files.

``build_result`` works with any subset of records, so a run stopped by Ctrl-C writes what it has
(``complete: false``). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from homellm.bench import metrics as m
from homellm.bench.records import RequestRecord
from homellm.errors import HomellmError
from homellm.fsutil import atomic_write_text

RESULT_FORMAT = "homellm-bench/1"


@dataclass(slots=True)
class BenchCard:
    """What a reader needs to reproduce or trust the run; the client fills it, nothing here
    measures anything."""

    endpoint: str = ""               # the URL requests went to
    api: str = ""                    # "chat" | "completions"
    model: str = ""
    server_version: str | None = None  # /version when the server has one
    dataset: str = ""                # name or path, and its hash when it is a file
    seed: int | None = None
    client_host: dict[str, Any] = field(default_factory=dict)      # hostname, cpu_count, python
    client_overhead: dict[str, Any] = field(default_factory=dict)  # loop lag, client CPU, ...
    extra: dict[str, Any] = field(default_factory=dict)             # flags, GPU, anything else


@dataclass(slots=True)
class RunInfo:
    """The run's own facts, in the records' clock (``time.perf_counter()`` seconds)."""

    started_at: float                # vLLM's benchmark_start_time: before the first dispatch
    ended_at: float                  # every request done (or the interrupt)
    max_concurrency: int | None = None
    request_rate: float | None = None  # None or inf: everything at once
    burstiness: float | None = None
    num_prompts: int | None = None
    label: str | None = None
    steady_window: tuple[float, float] | None = None  # set it to override the computed window
    complete: bool = True            # False: interrupted, the records are what it had


def build_result(
    records: Sequence[RequestRecord],
    run: RunInfo,
    card: BenchCard | dict[str, Any] | None = None,
    *,
    percentiles: Sequence[float] = m.DEFAULT_PERCENTILES,
    slos: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The result JSON as a dict: vLLM's field names where the meaning is the same
    (docs/bench.md has the mapping), ``bench_card``, per-request arrays for ``bench compare``."""
    records = sorted(records, key=lambda r: r.index)
    card_dict = asdict(card) if isinstance(card, BenchCard) else dict(card or {})
    duration = run.ended_at - run.started_at
    rate = run.request_rate
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "complete": run.complete,
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "label": run.label,
        "endpoint_type": card_dict.get("api") or None,
        "model_id": card_dict.get("model") or None,
        "num_prompts": run.num_prompts,
        "num_records": len(records),
        "request_rate": "inf" if rate is None or math.isinf(rate) else rate,
        "burstiness": run.burstiness,
        "max_concurrency": run.max_concurrency,
        "duration": duration,
    }
    result.update(m.compute_metrics(records, duration=duration,
                                    max_concurrency=run.max_concurrency,
                                    percentiles=percentiles, slos=slos,
                                    window=run.steady_window))
    steady = result["steady_state"]
    for key in ("window_start", "window_end"):
        if steady[key] is not None:  # relative to the run's start: perf_counter means nothing
            steady[key] -= run.started_at
    result["timeline"] = m.timeline(records, run.started_at, max(run.ended_at, run.started_at))
    result["bench_card"] = card_dict
    result.update(_per_request(records, run.started_at))
    return result


def _per_request(records: Sequence[RequestRecord], t0: float) -> dict[str, list[Any]]:
    """One entry per request in index order; ``None`` where it has no value (a failed request
    has no TTFT: vLLM writes 0.0 there, we write null)."""
    ok = [m.is_success(r) for r in records]
    return {
        "indices": [r.index for r in records],
        "input_lens": [r.prompt_tokens for r in records],
        "output_lens": [m.output_len(r) if s else 0 for r, s in zip(records, ok, strict=True)],
        "token_sources": [m.token_source(r) if s else None
                          for r, s in zip(records, ok, strict=True)],
        "ttfts": [r.ttft if s else None for r, s in zip(records, ok, strict=True)],
        "tpots": [m.tpot(r) if s else None for r, s in zip(records, ok, strict=True)],
        "itls": [r.itls if s else [] for r, s in zip(records, ok, strict=True)],
        "latencies": [m.e2el(r) if s else None for r, s in zip(records, ok, strict=True)],
        "start_times": [r.sent_at - t0 for r in records],
        "send_lags": [r.send_lag for r in records],
        "errors": [r.error or "" for r in records],
        "error_kinds": [m.error_kind(r) for r in records],
    }


# --- files ----------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null so every JSON parser reads the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def result_json(result: dict[str, Any]) -> str:
    return json.dumps(_finite(result), indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def save_result(result: dict[str, Any], path: str | Path) -> Path:
    atomic_write_text(path, result_json(result))
    return Path(path)


def load_result(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise HomellmError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise HomellmError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or "completed" not in data:
        raise HomellmError(f"{path}: not a bench result (no 'completed' field)")
    return data


def records_jsonl(records: Sequence[RequestRecord]) -> str:
    return "".join(json.dumps(_finite(r.to_json()), ensure_ascii=False) + "\n" for r in records)


def write_records_jsonl(records: Sequence[RequestRecord], path: str | Path) -> Path:
    atomic_write_text(path, records_jsonl(records))
    return Path(path)


def read_records_jsonl(path: str | Path) -> list[RequestRecord]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(RequestRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise HomellmError(f"{path}:{n}: not a request record: {exc}") from None
    return out


#: the CSV's columns, one row per request; times in ms, relative to the run's start where absolute
CSV_COLUMNS: tuple[str, ...] = (
    "index", "ok", "error_kind", "status", "start_s", "send_lag_ms", "ttft_ms", "tpot_ms",
    "e2el_ms", "chunks", "prompt_tokens", "output_tokens", "token_source", "usage_output_tokens",
    "worker", "error",
)


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1000.0:.3f}"


def records_csv(records: Sequence[RequestRecord], started_at: float) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in sorted(records, key=lambda r: r.index):
        ok = m.is_success(r)
        writer.writerow([
            r.index, int(ok), m.error_kind(r) or "", "" if r.status is None else r.status,
            f"{r.sent_at - started_at:.6f}", _ms(r.send_lag), _ms(r.ttft if ok else None),
            _ms(m.tpot(r) if ok else None), _ms(m.e2el(r) if ok else None), len(r.chunk_times),
            "" if r.prompt_tokens is None else r.prompt_tokens,
            m.output_len(r) if ok else "", m.token_source(r) if ok else "",
            "" if r.usage_output_tokens is None else r.usage_output_tokens, r.worker,
            r.error or "",
        ])
    return buf.getvalue()


def write_records_csv(records: Sequence[RequestRecord], path: str | Path,
                      started_at: float) -> Path:
    atomic_write_text(path, records_csv(records, started_at))
    return Path(path)
