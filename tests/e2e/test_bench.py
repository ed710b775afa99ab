"""`homellm bench` end to end against a real engine (`transformers serve` with the demo model,
behind the gateway of `homellm up`): its figures must agree with each other and with what the
gateway counted, and its files must be there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import UpProcess

pytestmark = pytest.mark.slow
REQUESTS = 12


def completion_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "homellm_gateway_completion_tokens_total")


def test_bench_against_transformers_serve(two_replica_stack: UpProcess, demo_model: Path,
                                          tmp_path: Path) -> None:
    before = completion_tokens(two_replica_stack.url)
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "homellm.cli", "bench", "--url", two_replica_stack.url,
         "--model", "tiny", "--tokenizer", str(demo_model), "--input-len", "24",
         "--output-len", "8", "--num-requests", str(REQUESTS), "--concurrency", "3",
         "--corpus", str(Path(__file__).parents[2] / "src/homellm/assets/demo_corpus.txt"),
         "--seed", "7",
         "--out", str(out), "--json", "--no-progress", "--slo", "ttft=60s,e2el=120s"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert result["completed"] == REQUESTS and result["failed"] == 0
    duration = result["duration"]
    total_out = result["total_output_tokens"]
    assert total_out == sum(result["output_lens"]) > 0
    assert result["output_throughput"] * duration == pytest.approx(total_out, rel=1e-6)
    assert result["request_throughput"] * duration == pytest.approx(REQUESTS, rel=1e-6)
    assert result["total_token_throughput"] * duration == pytest.approx(
        total_out + result["total_input_tokens"], rel=1e-6)
    assert 0 < result["median_ttft_ms"] <= result["median_e2el_ms"]
    assert result["request_goodput"] == pytest.approx(result["request_throughput"], rel=1e-6)
    # the engine's own usage counted the tokens, and the gateway saw the same ones, plus those
    # of bench's initial test request (vLLM's too: one request of at most 4 tokens)
    assert total_out + 1 <= completion_tokens(two_replica_stack.url) - before <= total_out + 4
    for name in ("bench.json", "bench.html"):
        assert (out / name).stat().st_size > 0, sorted(p.name for p in out.iterdir())
    assert list(out.glob("*.png")) and list(out.glob("*.jsonl"))
