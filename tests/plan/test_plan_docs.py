"""docs/plan.md's availability, fp8 and exit-code sections: the commands run as written, exit as
documented, and the numbers quoted for the user's case are the ones plan prints."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.plan.test_cli_plan import homellm

DOC = Path(__file__).resolve().parents[2] / "docs" / "plan.md"


def section(title: str) -> str:
    text = DOC.read_text("utf-8")
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start:end if end > 0 else len(text)]


def test_recommendation_commands_run_as_written(tmp_path: Path) -> None:
    block = re.search(r"```bash\n(.*?)```", section("Which layout"), re.S)
    assert block is not None
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) >= 5
    for line in lines:
        command, _, comment = line.partition("#")
        argv = shlex.split(command)
        assert argv[0] == "homellm"
        done = homellm(*argv[1:], home=tmp_path)
        expected = 1 if "exit 1" in comment else 0
        assert done.returncode == expected, (line, done.stdout[-2000:], done.stderr)


def test_numbers_quoted_for_the_users_case_are_plans(tmp_path: Path) -> None:
    text = " ".join(section("Which layout").split())

    def plan(*extra: str) -> dict:
        done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "2xrtx-pro-6000",
                       "--context", "131072", "--json", *extra, home=tmp_path)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    one, eight = plan("--concurrency", "1"), plan("--concurrency", "8")
    fp8_kv = plan("--concurrency", "8", "--kv-cache-dtype", "fp8")
    assert one["recommended"] == "replicas" and eight["recommended"] == "tp"
    assert fp8_kv["recommended"] == "replicas"
    reps, tp = eight["layouts"]["replicas"], eight["layouts"]["tp"]
    assert (f"the replicas hold {reps['requests_at_context']:.1f} "
            f"({reps['requests_after_failure']:.1f} after a failure)") in text
    assert f"**TP=2** ({tp['requests_at_context']:.1f} requests" in text
    assert (f"Together they hold {reps['requests_at_context']:.1f} requests of 131,072 tokens; "
            f"after a GPU failure the one left holds {reps['requests_after_failure']:.1f}. "
            f"TP=2 would hold {tp['requests_at_context']:.1f}") in text
    kv = fp8_kv["layouts"]["replicas"]
    assert (f"the replicas hold {kv['requests_at_context']:.1f} requests of 128K "
            f"({kv['requests_after_failure']:.1f} after a failure)") in text


def test_fp8_weights_quoted_are_plans(tmp_path: Path) -> None:
    text = " ".join(section("fp8 weights").split())

    def weights(*extra: str) -> float:
        done = homellm("plan", "serve", "qwen3-30b-a3b", "--gpus", "rtx-pro-6000", "--json",
                       *extra, home=tmp_path)
        figures = json.loads(done.stdout)["layouts"]["replicas"]["figures"]
        return next(f["value"] for f in figures if f["key"] == "serve.memory.weights")

    assert f"(Qwen3-30B-A3B: {weights():.1f} → {weights('--dtype', 'fp8'):.1f} GiB" in text
