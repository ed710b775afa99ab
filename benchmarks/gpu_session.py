"""The pieces ``benchmarks/gpu_session.sh`` runs between its time boxes: the model folder, the
stack file, the openai client's chat and stream, NVML readings against ``nvidia-smi`` at the
same moment, a free port, a readiness wait, and the one summary JSON.

Each subcommand is one step's work; the shell script times each one out, records its exit
code, and goes on. ``--cpu`` builds the embedded demo model (tiny) instead of a preset-shaped
one, so the whole session runs on a machine without a GPU (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# the GPU session's served model: the 1.3B training preset's shape with random weights (nothing
# can be downloaded on the GPU machine), the demo tokenizer, bf16 (2.6 GB)
SERVE_PRESET = "1.3B"
NVML_FIELDS = ("temperature_c", "power_w", "memory_used_mib", "utilization_pct")
SMI_QUERY = "temperature.gpu,power.draw,memory.used,utilization.gpu"
# which entry of the summary's figures each step leaves (setup and up leave none)
STEP_FIGURES = {"model": "model", "client": "client", "bench": "bench",
                "nvml": "nvml_vs_smi", "calibrate": "calibrate", "plan_serve": "plan_serve",
                "train_gpu": "train_gpu"}


def build_model(out: Path, cpu: bool) -> dict[str, Any]:
    """The demo model (``--cpu``), or a random ``SERVE_PRESET``-shaped Qwen3 with the demo
    tokenizer, written as a Hugging Face folder that ``homellm up`` and ``plan`` read."""
    from homellm.demo import build_demo_model

    demo = build_demo_model(out.parent / "demo-model")
    if cpu:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(demo, out)
        return {"model": str(out), "shape": "homellm demo (tiny Qwen3)"}
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from homellm.models_catalog import TRAIN_PRESETS

    tokenizer = AutoTokenizer.from_pretrained(demo)
    # the embedding rows match the tokenizer: generated ids must decode
    config = Qwen3Config(**{**TRAIN_PRESETS[SERVE_PRESET], "vocab_size": len(tokenizer),
                            "max_position_embeddings": 4096},
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         dtype="bfloat16")
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return {"model": str(out), "shape": f"{SERVE_PRESET} preset, random weights",
            "parameters": params}


def stack_yaml(model: Path, port: int, context: int, cpu: bool) -> str:
    device = "cpu" if cpu else "cuda"
    gpus = "[]" if cpu else "[0]"
    return f"""\
# written by benchmarks/gpu_session.sh: one transformers serve replica behind the gateway
models:
  bench:
    source: {model}
    engine: transformers
    device: {device}
    dtype: bfloat16
    max_context: {context}
    replicas:
      - {{role: primary, gpus: {gpus}}}
gateway:
  listen: 127.0.0.1:{port}
supervisor:
  ready_timeout_s: 240
  stop_grace_s: 10
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, pid: int | None = None) -> dict[str, Any]:
    """Poll ``url`` until it answers 200, up to ``timeout_s``; give up at once when process
    ``pid`` (the server) has ended."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout_s:
        if pid is not None and not Path(f"/proc/{pid}").exists():
            raise SystemExit(f"the server (pid {pid}) ended before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return {"ready": True, "seconds": round(time.monotonic() - start, 2)}
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f} s ({last})")


def client_check(base_url: str, model: str, max_tokens: int) -> dict[str, Any]:
    """One chat and one stream through the openai client, timed."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Привет! Расскажи о себе."}]
    start = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=messages,
                                           max_tokens=max_tokens)
    chat = {"seconds": round(time.perf_counter() - start, 3),
            "finish_reason": reply.choices[0].finish_reason,
            "chars": len(reply.choices[0].message.content or ""),
            "usage": reply.usage.model_dump() if reply.usage else None}
    start = time.perf_counter()
    first = None
    chunks = 0
    text = ""
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=messages,
                                                max_tokens=max_tokens, stream=True):
        if not chunk.choices:
            continue
        if first is None:
            first = time.perf_counter() - start
        chunks += 1
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    stream = {"seconds": round(time.perf_counter() - start, 3),
              "first_chunk_s": round(first, 3) if first is not None else None,
              "chunks": chunks, "chars": len(text), "finish_reason": finish}
    if not chat["chars"] or not chunks:
        raise SystemExit(f"empty answer: chat {chat}, stream {stream}")
    return {"chat": chat, "stream": stream}


def _nvml_read(pynvml: Any, handle: Any) -> dict[str, float]:
    return {"temperature_c": float(pynvml.nvmlDeviceGetTemperature(handle, 0)),
            "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "memory_used_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
            "utilization_pct": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)}


def _smi_read() -> dict[str, float]:
    done = subprocess.run(["nvidia-smi", "-i", "0", f"--query-gpu={SMI_QUERY}",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True,
                          timeout=10, check=True)
    values = [float(v) for v in done.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(NVML_FIELDS, values, strict=True))


def nvml_samples(out: Path, duration_s: float, interval_s: float) -> dict[str, Any]:
    """NVML readings with ``nvidia-smi --query-gpu`` between two of them, every ``interval_s``
    for ``duration_s`` (or until killed): one JSON line each, flushed as it goes."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    rows = 0
    end = time.monotonic() + duration_s
    with out.open("a", encoding="utf-8") as sink:
        while time.monotonic() < end:
            before = _nvml_read(pynvml, handle)
            smi = _smi_read()
            after = _nvml_read(pynvml, handle)
            sink.write(json.dumps({"t": time.time(), "gpu": name, "nvml_before": before,
                                   "smi": smi, "nvml_after": after}) + "\n")
            sink.flush()
            rows += 1
            time.sleep(interval_s)
    pynvml.nvmlShutdown()
    return {"samples": rows, "gpu": name}


def nvml_comparison(path: Path) -> dict[str, Any]:
    """Per field: the largest gap between nvidia-smi and the nearer NVML reading of the two
    around it, and the ranges seen."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return {"samples": 0}
    out: dict[str, Any] = {"samples": len(rows), "gpu": rows[0].get("gpu")}
    for field in NVML_FIELDS:
        gaps = [min(abs(r["smi"][field] - r["nvml_before"][field]),
                    abs(r["smi"][field] - r["nvml_after"][field])) for r in rows]
        seen = [r["smi"][field] for r in rows]
        out[field] = {"max_gap": max(gaps), "smi_min": min(seen), "smi_max": max(seen)}
    return out


def _figures(plan: dict[str, Any]) -> dict[str, float]:
    """The recommended layout's speed figures from ``plan serve --json``."""
    layout = plan.get("layouts", {}).get(plan.get("recommended"), {})
    return {f["key"]: f["value"] for f in layout.get("figures", [])
            if f["key"].endswith((".tpot", ".ttft", ".tokens_per_s"))}


def summarize(work: Path, steps_file: Path, mode: str) -> dict[str, Any]:
    """One JSON: every step's exit code and time, and the figures each step left in ``work``
    (or why there are none)."""
    steps = [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
    figures: dict[str, Any] = {}

    def load(name: str) -> Any:
        path = work / name
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None           # the step failed: its log says why

    figures["model"] = load("model.json")
    figures["client"] = load("client.json")
    bench = load("bench/bench.json")
    if bench is not None:
        keep = ("completed", "failed", "duration_s", "request_throughput", "output_throughput",
                "mean_ttft_ms", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
                "median_e2el_ms", "max_concurrency", "valid", "invalid_reasons")
        figures["bench"] = {k: bench.get(k) for k in keep}
    calibrate = load("calibrate.json")
    if calibrate is not None:
        figures["calibrate"] = [{"factor": f["factor"], "value": f["value"],
                                 "measured_ms": f["measured"],
                                 "predicted_default_ms": f["predicted_default"]}
                                for f in calibrate.get("fits", [])]
    plan = load("plan_serve.json")
    if plan is not None:
        figures["plan_serve"] = {"engine": plan.get("engine"),
                                 "recommended": plan.get("recommended"),
                                 "figures": _figures(plan)}
        if bench is not None:
            figures["plan_serve"]["measured"] = {k: bench.get(k) for k in
                                                 ("median_tpot_ms", "mean_ttft_ms",
                                                  "output_throughput")}
    nvml = work / "nvml.jsonl"
    if nvml.exists():
        figures["nvml_vs_smi"] = nvml_comparison(nvml)
    train = sorted(work.glob("train/train_gpu-*.json"))
    if train:
        data = json.loads(train[-1].read_text())
        figures["train_gpu"] = {"throughput": data.get("throughput"),
                                "longest_context": data.get("longest_context")}
    else:     # killed by its time box: the rows it printed as it went
        log = work / "logs" / "train_gpu.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        partial = [json.loads(line) for line in lines if line.startswith("{")]
        if partial:
            figures["train_gpu"] = {"partial_rows": partial}
    for step in steps:
        key = STEP_FIGURES.get(step["name"])
        step["figures"] = key if key and figures.get(key) is not None else None
    return {"mode": mode, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ok": all(s["rc"] == 0 for s in steps), "steps": steps,
            "failed": [s["name"] for s in steps if s["rc"] != 0], "figures": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("stack")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    sub.add_parser("port")
    p = sub.add_parser("ready")
    p.add_argument("--url", required=True)
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("--pid", type=int)
    p = sub.add_parser("client")
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="bench")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("nvml")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--interval", type=float, default=2.0)
    p = sub.add_parser("summary")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=Path, required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "model":
        args.json.write_text(json.dumps(build_model(args.out, args.cpu)))
    elif args.command == "stack":
        args.out.write_text(stack_yaml(args.model, args.port, args.context, args.cpu))
    elif args.command == "port":
        print(free_port())
    elif args.command == "ready":
        print(json.dumps(wait_ready(args.url, args.timeout, args.pid)))
    elif args.command == "client":
        result = client_check(args.url, args.model, args.max_tokens)
        args.json.write_text(json.dumps(result))
        print(json.dumps(result))
    elif args.command == "nvml":
        print(json.dumps(nvml_samples(args.out, args.duration, args.interval)))
    elif args.command == "summary":
        summary = summarize(args.work, args.steps, args.mode)
        args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        print(json.dumps({"ok": summary["ok"], "failed": summary["failed"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
