"""GPU training figures of ``homellm train`` (issue: "MFU and tokens/s for 125m, 350m and 1.3b
at 2K–4K context; target ≥ 40% MFU at 350M and above. The longest context 125m and 1.3b train
at on one 80 GB GPU (target: 108K for both), with peak memory; time per billion tokens per
preset, compared with homellm plan's prediction").

Runs the real CLI (``python -m homellm.cli train run.yaml``: bf16, one GPU, document masking,
FlexAttention) on a synthetic Russian-like corpus (``train_cpu.build_corpus``) and reads its
``metrics.jsonl``:

1. **Throughput**: each (preset, context, micro-batch) for ``--steps`` steps; the median
   tokens/s and MFU of the steps after the first ``--warmup`` (compilation, allocator warmup),
   peak memory, and seconds per billion tokens next to ``homellm plan train``'s prediction for
   the same model, context, micro-batch and GPU (``--json``; the plan's default MFU unless a
   calibration is stored, which the result records).
2. **Longest context**: for each preset, growing lengths at micro-batch 1 with activation
   checkpointing, 3 steps each, until one is refused by the pre-flight estimate or runs out of
   memory; the longest that trained, its peak memory and tokens/s.

    python benchmarks/train_gpu.py                      # on a GPU machine, ≈ 20 min on an H100
    python benchmarks/train_gpu.py --device cpu --quick # smoke run of the script itself (tiny)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _infra import machine_info, versions, write_json  # noqa: E402
from train_cpu import build_corpus  # noqa: E402

# (preset, seq_len, micro_batch): 2K and 4K context at 8K tokens (1.3b: 4K) per micro-batch
THROUGHPUT = [("125m", 2048, 8), ("125m", 4096, 4), ("350m", 2048, 8), ("350m", 4096, 4),
              ("1.3b", 2048, 4), ("1.3b", 4096, 2)]
CONTEXTS = [8192, 16384, 32768, 65536, 110592]
LONG_PRESETS = ("125m", "1.3b")
QUICK_THROUGHPUT = [("tiny", 64, 4), ("tiny", 128, 2)]
QUICK_CONTEXTS = [64, 128, 256]


def run_train(corpus: dict[str, Any], folder: Path, device: str, steps: int,
              **settings: Any) -> dict[str, Any]:
    """One ``homellm train`` process; its train rows, or why it stopped."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": "tiny", "tokenizer": corpus["tokenizer"], "dataset": corpus["dataset"],
        "out": str(folder / "run"), "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 1,
        "max_steps": steps, "eval_every": 1_000_000, "eval_tokens": 1,
        "gpus": [0] if device == "cuda" else [],
        "checkpoint": {"every_steps": None, "every_minutes": None, "keep_last": 1},
        "needle_probe": False, "sample_prompts": [], "log_every": 1_000_000, **settings,
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "train", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    log = folder / "run" / "metrics.jsonl"
    rows = ([json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if log.exists() else [])
    error = next((line for line in done.stderr.splitlines() if line.startswith("error:")),
                 done.stderr.strip().splitlines()[-1] if done.returncode else "")
    return {"returncode": done.returncode, "error": error,
            "train": [r for r in rows if r["kind"] == "train"],
            "memory_line": next((line for line in done.stdout.splitlines()
                                 if line.startswith("memory per GPU")), "")}


def steady(rows: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    kept = rows[warmup:] or rows[-1:]
    def median(key: str) -> float | None:
        values = [r[key] for r in kept if r.get(key) is not None]
        return statistics.median(values) if values else None
    return {"steps": len(kept), "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
            "peak_memory_gib": max((r["memory_gib"] for r in rows
                                    if r.get("memory_gib") is not None), default=None),
            "last_loss": rows[-1]["loss"] if rows else None}


def plan_prediction(preset: str, seq_len: int, micro_batch: int, gpu: str) -> dict[str, Any]:
    """``homellm plan train``'s tokens/s for the same run (its preset names: 125M, 355M...)."""
    name = {"125m": "125M", "350m": "355M", "1.3b": "1.3B", "3b": "3B"}.get(preset)
    if name is None:
        return {"note": f"{preset}: not a plan preset"}
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "plan", "train", name,
                           "--tokens", "1B", "--gpus", gpu, "--context", str(seq_len),
                           "--micro-batch", str(micro_batch), "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"note": done.stderr.strip()[-300:]}
    return {"plan": json.loads(done.stdout)}


def _gpu_key() -> str:
    import torch

    from homellm.hardware import find_gpu

    return find_gpu(torch.cuda.get_device_name(0)).key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short lengths")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--mb", type=float, default=48.0, help="synthetic corpus size")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--presets", help="only these throughput presets, e.g. 125m,350m "
                        "(benchmarks/gpu_session.sh runs a subset inside its time box)")
    parser.add_argument("--long-presets", help="presets for the longest-context search")
    parser.add_argument("--contexts", help="lengths for the longest-context search")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_gpu: no CUDA device; run on a GPU machine (or --device cpu --quick to "
              "check the script)", file=sys.stderr)
        return 2
    throughput = QUICK_THROUGHPUT if args.quick else THROUGHPUT
    contexts = QUICK_CONTEXTS if args.quick else CONTEXTS
    long_presets = ("tiny",) if args.quick else LONG_PRESETS
    if args.presets:
        throughput = [row for row in throughput if row[0] in args.presets.split(",")]
    if args.long_presets is not None:
        long_presets = tuple(p for p in args.long_presets.split(",") if p)
    if args.contexts:
        contexts = [int(c) for c in args.contexts.split(",")]
    steps, warmup = (4, 1) if args.quick else (args.steps, args.warmup)
    gpu = _gpu_key() if args.device == "cuda" else None
    result: dict[str, Any] = {
        "machine": machine_info(), "versions": versions(), "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "settings": {"steps": steps, "warmup": warmup, "vocab": args.vocab},
        "throughput": [], "longest_context": {}}
    with tempfile.TemporaryDirectory(prefix="homellm-train-gpu-") as tmp:
        root = Path(tmp)
        corpus = build_corpus(root, 2.0 if args.quick else args.mb,
                              400 if args.quick else args.vocab)
        result["corpus"] = corpus
        for preset, seq_len, micro_batch in throughput:
            run = run_train(corpus, root / f"tp-{preset}-{seq_len}", args.device, steps,
                            model=preset, seq_len=seq_len, micro_batch=micro_batch)
            row: dict[str, Any] = {"preset": preset, "seq_len": seq_len,
                                   "micro_batch": micro_batch, "error": run["error"],
                                   "memory_estimate": run["memory_line"],
                                   **steady(run["train"], warmup)}
            if row["tokens_per_s"]:
                row["seconds_per_billion_tokens"] = 1e9 / row["tokens_per_s"]
            if gpu:
                row["prediction"] = plan_prediction(preset, seq_len, micro_batch, gpu)
            result["throughput"].append(row)
            print(json.dumps({k: row[k] for k in ("preset", "seq_len", "tokens_per_s", "mfu",
                                                  "peak_memory_gib", "error")}), flush=True)
        for preset in long_presets:
            tried = []
            for seq_len in contexts:
                run = run_train(corpus, root / f"ctx-{preset}-{seq_len}", args.device, 3,
                                model=preset, seq_len=seq_len, micro_batch=1,
                                activation_checkpointing=True)
                trained = run["returncode"] == 0 and len(run["train"]) == 3
                tried.append({"seq_len": seq_len, "trained": trained, "error": run["error"],
                              "memory_estimate": run["memory_line"],
                              **steady(run["train"], 1)})
                print(json.dumps({"preset": preset, "seq_len": seq_len, "trained": trained,
                                  "error": run["error"]}), flush=True)
                if not trained:
                    break
            longest = max((t["seq_len"] for t in tried if t["trained"]), default=None)
            result["longest_context"][preset] = {"longest": longest, "tried": tried}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    suffix = "-quick" if args.quick else ""
    path = args.out / f"train_gpu-{args.device}{suffix}-{stamp}.json"
    write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
