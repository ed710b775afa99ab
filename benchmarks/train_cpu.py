"""CPU training throughput of ``homellm train`` next to a minimal plain-PyTorch loop (issue:
"tokens/s of the tiny and 125m presets vs a plain loop of the same model and batch in the same
run; target ≥ 0.9×").

Builds a synthetic Russian-like corpus (pseudo-words from Cyrillic syllables, Zipf-distributed,
documents of 40–500 words), a BPE tokenizer on it and its token shards, once. Then, for each
preset, in every round and in a rotating order, each path is its own process:

- ``homellm``: ``python -m homellm.cli train run.yaml`` (fp32, CPU, document masking on, as a
  user runs it); figures from its ``metrics.jsonl`` train rows.
- ``plain``: the same model (``build_model(preset_config(name, vocab))``), random windows of
  the same shape from the same shards, ``model(input_ids).logits`` → ``F.cross_entropy``,
  backward, ``clip_grad_norm_(1.0)``, AdamW (foreach, same groups and settings), zero_grad,
  ``loss.item()``; ``time.perf_counter`` around the whole step, batch loading included.
- ``--variants tiny`` adds, for the presets named, plain loops that each take one of homellm's
  choices, to attribute the difference: ``plain+docpos`` (restarting position ids →
  block-diagonal mask), ``plain+chunked_ce`` (homellm's ``LossModel``: chunked CE whose
  backward recomputes the LM head), ``plain+both`` (``LossModel`` with position ids:
  homellm's model path without its loop).
- ``--attribute tiny,125m``: one process per preset alternates the plain loop and those
  variants step by step on one model (order rotated every cycle), so that the load of a shared
  machine hits every variant alike; per-cycle ratios to the plain step, medians over cycles.

Figures are medians over the steps after the first ``--warmup`` of each process; each path's
ratio to ``plain`` is taken within a round, and the median over rounds is reported. Both
figures are given: ``tokens_per_s`` (the step as timed inside the loop, which is what homellm
logs) and ``wall_tokens_per_s`` (tokens of a step over the time between consecutive step ends,
so work done between steps, such as writing the metrics row, counts too).

    python benchmarks/train_cpu.py [--rounds 2] [--variants tiny] [--attribute tiny,125m]
    python benchmarks/train_cpu.py --quick   # smoke run: tiny only, few steps, one round
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
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

# preset -> (seq_len, micro_batch, steps per process)
SETTINGS = {"tiny": (256, 8, 40), "125m": (256, 4, 10)}
QUICK = {"tiny": (64, 4, 5)}
VARIANTS = ("plain+docpos", "plain+chunked_ce", "plain+both")
PLAIN_PATHS = ("plain", *VARIANTS)
_CONSONANTS = "бвгдзклмнпрстфхцчшщжй"
_VOWELS = "аеиоуыэюяё"


# -- the corpus -------------------------------------------------------------------------------


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 2, 2, 3, 3, 4))
        words.add("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS)
                          for _ in range(syllables)) + rng.choice(("", "", "т", "м", "х")))
    return sorted(words)


def build_corpus(root: Path, megabytes: float, vocab: int, seed: int = 0) -> dict[str, Any]:
    """Dataset folder (splits/*.jsonl of documents), tokenizer and shards under ``root``."""
    from homellm.data.layout import SPLITS, DatasetLayout
    from homellm.data.records import Document
    from homellm.data.shards import tokenize_dataset
    from homellm.tokenizer import train_tokenizer

    rng = random.Random(seed)
    lexicon = _lexicon(rng, 20_000)
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]   # Zipf
    layout = DatasetLayout(root / "ds")
    layout.splits.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    for split in SPLITS:
        target = int(megabytes * 2**20 * (0.9 if split == "train" else 0.05))
        written, number = 0, 0
        with layout.split_file(split).open("w", encoding="utf-8") as out:
            while written < target:
                words = rng.choices(lexicon, weights, k=rng.randint(40, 500))
                sentences = [" ".join(words[i:i + 12]).capitalize() + rng.choice(".!?")
                             for i in range(0, len(words), 12)]
                doc = Document(id=f"{split}-{number}", source="synthetic.txt",
                               text=" ".join(sentences))
                line = json.dumps(doc.to_json(), ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode())
                number += 1
    generate_s = time.perf_counter() - began
    began = time.perf_counter()
    train_tokenizer(layout, root / "tok", vocab_size=vocab)
    tokenizer_s = time.perf_counter() - began
    began = time.perf_counter()
    shards = tokenize_dataset(layout, root / "tok")
    tokenize_s = time.perf_counter() - began
    from homellm.data.reader import ShardSet
    from homellm.tokenizer import load_tokenizer

    train = ShardSet.open(shards, "train")
    tokenizer = load_tokenizer(root / "tok")
    return {"dataset": str(layout.root), "tokenizer": str(root / "tok"), "shards": str(shards),
            "megabytes": megabytes, "vocab": tokenizer.get_vocab_size(with_added_tokens=True),
            "train_tokens": len(train),
            "train_documents": len(train.doc_starts(0, len(train))),
            "build_s": {"generate": round(generate_s, 1), "tokenizer": round(tokenizer_s, 1),
                        "tokenize": round(tokenize_s, 1)}}


# -- the plain loop (run in its own process: ``--worker``) ------------------------------------


def plain_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One plain loop (``spec["variant"]``), or with variant ``cycle`` all of ``PLAIN_PATHS``
    on the same model and optimizer, one step each in turn (rotating the order every cycle),
    so that the machine's load changes hit every variant alike."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from homellm.data.reader import ShardSet
    from homellm.train.lm import LossModel
    from homellm.train.presets import build_model, preset_config

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    seq_len, batch = spec["seq_len"], spec["micro_batch"]
    lm = build_model(preset_config(spec["preset"], spec["vocab"]))
    lm.train()
    decay = [p for p in lm.parameters() if p.dim() >= 2]
    no_decay = [p for p in lm.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-4, betas=(0.9, 0.95), foreach=True)
    loss_model = LossModel(lm)

    shards = ShardSet.open(spec["shards"], "train")
    tokens = shards.tokens(0, len(shards)).astype(np.int64)
    # each token's position in its document, so a window's ids are min(that, offset in window)
    begin = np.zeros(len(tokens), dtype=np.int64)
    starts = shards.doc_starts(0, len(tokens))
    begin[starts] = starts
    in_doc = np.arange(len(tokens), dtype=np.int64) - np.maximum.accumulate(begin)
    offsets = np.arange(seq_len, dtype=np.int64)
    n_windows = (len(tokens) - 1) // seq_len
    rng = np.random.default_rng(0)

    def step(variant: str) -> tuple[float, float, float]:
        began = time.perf_counter()
        at = rng.integers(0, n_windows, batch) * seq_len
        window = torch.from_numpy(np.stack([tokens[a:a + seq_len + 1] for a in at]))
        inputs, targets = window[:, :-1], window[:, 1:]
        positions = None
        if variant in ("plain+docpos", "plain+both"):
            positions = torch.from_numpy(np.stack([np.minimum(in_doc[a:a + seq_len], offsets)
                                                   for a in at]))
        if variant in ("plain+chunked_ce", "plain+both"):
            loss_sum, counted = loss_model(inputs, targets, positions)
            loss = loss_sum / counted
        else:
            logits = lm(input_ids=inputs, position_ids=positions).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        end = time.perf_counter()
        return end - began, end, value

    if spec["variant"] != "cycle":
        times, ends, losses = zip(*(step(spec["variant"]) for _ in range(spec["steps"])),
                                  strict=True)
        return {"step_s": list(times), "end_s": list(ends), "loss": list(losses),
                "threads": torch.get_num_threads()}
    cycles: dict[str, list[float]] = {v: [] for v in PLAIN_PATHS}
    for index in range(spec["steps"]):
        turn = index % len(PLAIN_PATHS)
        for variant in PLAIN_PATHS[turn:] + PLAIN_PATHS[:turn]:
            cycles[variant].append(step(variant)[0])
    return {"step_s": cycles, "threads": torch.get_num_threads()}


# -- the homellm run --------------------------------------------------------------------------


def homellm_run(corpus: dict[str, Any], preset: str, seq_len: int, micro_batch: int,
                steps: int, folder: Path) -> dict[str, Any]:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": preset, "tokenizer": corpus["tokenizer"], "dataset": corpus["dataset"],
        "out": str(folder / "run"), "seq_len": seq_len, "micro_batch": micro_batch,
        "lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 1, "max_steps": steps,
        "eval_every": 1_000_000, "eval_tokens": seq_len * micro_batch, "gpus": [],
        "precision": "fp32", "checkpoint": {"every_steps": None, "every_minutes": None,
                                            "keep_last": 1},
        "needle_probe": False, "sample_prompts": [], "log_every": 1_000_000,
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "homellm.cli", "train", str(path)],
                          capture_output=True, text=True, cwd=ROOT, check=False,
                          env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"homellm train failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text()
            .splitlines() if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    tokens_per_step = seq_len * micro_batch
    return {"step_s": [tokens_per_step / r["tokens_per_s"] for r in train],
            "end_s": [r["time"] for r in train], "loss": [r["loss"] for r in train],
            "process_wall_s": round(wall, 1)}


# -- figures ----------------------------------------------------------------------------------


def summarize(raw: dict[str, Any], tokens_per_step: int, warmup: int) -> dict[str, Any]:
    step_s = raw["step_s"][warmup:]
    ends = raw["end_s"][warmup - 1:] if warmup > 0 else raw["end_s"]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    out = {"steps_measured": len(step_s),
           "tokens_per_s": round(tokens_per_step / statistics.median(step_s), 1),
           "wall_tokens_per_s": (round(tokens_per_step / statistics.median(gaps), 1)
                                 if gaps else None),
           "step_s": [round(s, 4) for s in raw["step_s"]],
           "first_loss": round(raw["loss"][0], 4), "last_loss": round(raw["loss"][-1], 4)}
    if "process_wall_s" in raw:
        out["process_wall_s"] = raw["process_wall_s"]
    return out


def fast_figures(data: dict[str, Any]) -> dict[str, Any]:
    """Load-robust figures from the stored step times: tokens/s at the fastest quartile's edge
    (25th percentile step time) of each process, ratios to ``plain`` within a round, medians
    over rounds. Another process on the machine only ever slows a step down, so the fast steps
    are the ones closest to the code's own cost."""
    warmup = data["settings"]["warmup_steps_skipped"]
    out: dict[str, Any] = {}

    def p25(times: list[float]) -> float:
        return statistics.quantiles(times, n=4)[0]

    for preset, entry in data["presets"].items():
        per_round = []
        for row in entry["rounds"]:
            fast = {path: entry["tokens_per_step"] / p25(f["step_s"][warmup:])
                    for path, f in row["figures"].items()}
            per_round.append({path: round(v / fast["plain"], 3) for path, v in fast.items()
                              if path != "plain"})
        medians = {p: round(statistics.median(r[p] for r in per_round), 3)
                   for p in per_round[0]}
        out[preset] = {"ratio_per_round": per_round, "median_ratio_vs_plain": medians}
    for preset, entry in data.get("attribution", {}).items():
        kept = {v: t[warmup:] for v, t in entry["step_s"].items()}
        out[f"{preset} (attribution)"] = {
            "median_ratio_vs_plain": {v: round(p25(kept["plain"]) / p25(t), 3)
                                      for v, t in kept.items() if v != "plain"}}
    return out


def attribute(step_s: dict[str, list[float]], tokens_per_step: int,
              warmup: int) -> dict[str, Any]:
    """Per cycle, each variant's tokens/s over the plain loop's; medians over cycles."""
    kept = {v: times[warmup:] for v, times in step_s.items()}
    ratios = {v: [round(p / t, 3) for p, t in zip(kept["plain"], times, strict=True)]
              for v, times in kept.items() if v != "plain"}
    return {"cycles_measured": len(kept["plain"]),
            "tokens_per_s": {v: round(tokens_per_step / statistics.median(t), 1)
                             for v, t in kept.items()},
            "median": {v: statistics.median(r) for v, r in ratios.items()},
            "ratio_per_cycle": ratios,
            "step_s": {v: [round(x, 4) for x in t] for v, t in step_s.items()}}


def run_path(path: str, corpus: dict[str, Any], preset: str, seq_len: int, micro_batch: int,
             steps: int, threads: int, tmp: Path, tag: str) -> dict[str, Any]:
    if path == "homellm":
        return homellm_run(corpus, preset, seq_len, micro_batch, steps, tmp / tag)
    spec = {"variant": path, "preset": preset, "vocab": corpus["vocab"], "seq_len": seq_len,
            "micro_batch": micro_batch, "steps": steps, "threads": threads,
            "shards": corpus["shards"]}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{path} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, few steps")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--presets", default="tiny,125m")
    parser.add_argument("--variants", default="",
                        help="presets (comma-separated) that also run the plain loops with one "
                             "of homellm's choices each")
    parser.add_argument("--attribute", default="",
                        help="presets (comma-separated) for which one process alternates the "
                             "plain loop and its variants step by step, on one model")
    parser.add_argument("--cycles", type=int, default=12, help="steps per variant there")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--mb", type=float, default=8.0, help="synthetic corpus size")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out per process")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rescore", type=Path, nargs="*", default=[],
                        help="add the fast-quartile figures to these result files and exit")
    args = parser.parse_args(argv)
    for path in args.rescore:
        data = json.loads(path.read_text())
        data["fast_quartile"] = fast_figures(data)
        write_json(path, data)
        print(f"{path}: {json.dumps(data['fast_quartile'])}")
    if args.rescore:
        return 0
    if args.worker:
        print(json.dumps(plain_worker(json.loads(args.worker))))
        return 0

    import torch

    threads = torch.get_num_threads()   # the default a `homellm train` process gets too
    if args.quick:
        settings, rounds, vocab, megabytes = QUICK, 1, 1000, 0.3
    else:
        settings = {p: SETTINGS[p] for p in args.presets.split(",")}
        rounds, vocab, megabytes = args.rounds, args.vocab, args.mb
    with_variants = set(args.variants.split(",")) if args.variants and not args.quick else set()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine, load_before = machine_info(), os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="homellm-train-bench-") as tmpname:
        tmp = Path(tmpname)
        corpus = build_corpus(tmp, megabytes, vocab)
        print(f"corpus: {json.dumps(corpus)}", flush=True)
        for preset, (seq_len, micro_batch, steps) in settings.items():
            paths = ["plain", "homellm"] + (list(VARIANTS) if preset in with_variants else [])
            tokens_per_step = seq_len * micro_batch
            per_round = []
            for r in range(rounds):
                order = paths[r % len(paths):] + paths[:r % len(paths)]
                figures = {}
                for path in order:
                    raw = run_path(path, corpus, preset, seq_len, micro_batch, steps, threads,
                                   tmp, f"{preset}-r{r}-{path}")
                    figures[path] = summarize(raw, tokens_per_step, args.warmup)
                    print(f"{preset} round {r} {path}: {figures[path]['tokens_per_s']} tok/s "
                          f"(wall {figures[path]['wall_tokens_per_s']})", flush=True)
                ratios = {p: round(figures[p]["tokens_per_s"] / figures["plain"]["tokens_per_s"],
                                   3) for p in paths if p != "plain"}
                wall_ratios = {p: round(figures[p]["wall_tokens_per_s"]
                                        / figures["plain"]["wall_tokens_per_s"], 3)
                               for p in paths if p != "plain" and figures[p]["wall_tokens_per_s"]
                               and figures["plain"]["wall_tokens_per_s"]}
                per_round.append({"round": r, "order": order, "figures": figures,
                                  "ratio_vs_plain": ratios, "wall_ratio_vs_plain": wall_ratios})
            median = {p: round(statistics.median(x["figures"][p]["tokens_per_s"]
                                                 for x in per_round), 1) for p in paths}
            results[preset] = {
                "seq_len": seq_len, "micro_batch": micro_batch, "steps": steps,
                "tokens_per_step": tokens_per_step, "rounds": per_round,
                "median_tokens_per_s": median,
                "median_ratio_vs_plain": {p: round(statistics.median(
                    x["ratio_vs_plain"][p] for x in per_round), 3)
                    for p in paths if p != "plain"},
                "median_wall_ratio_vs_plain": {p: round(statistics.median(
                    x["wall_ratio_vs_plain"][p] for x in per_round), 3)
                    for p in paths if p != "plain"
                    and all(p in x["wall_ratio_vs_plain"] for x in per_round)},
            }
            print(f"{preset}: median tok/s {median}; median ratio vs plain "
                  f"{results[preset]['median_ratio_vs_plain']}", flush=True)
        attribution = {}
        for preset in [p for p in args.attribute.split(",") if p] if not args.quick else []:
            seq_len, micro_batch, _steps = SETTINGS[preset]
            raw = run_path("cycle", corpus, preset, seq_len, micro_batch, args.cycles, threads,
                           tmp, f"{preset}-cycle")
            attribution[preset] = attribute(raw["step_s"], seq_len * micro_batch, args.warmup)
            print(f"{preset} attribution: {json.dumps(attribution[preset]['median'])}",
                  flush=True)
    summary = {
        "benchmark": "train_cpu", "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick, "machine": machine, "versions": versions(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "settings": {"torch_threads": threads, "precision": "fp32", "rounds": rounds,
                     "warmup_steps_skipped": args.warmup,
                     "variants_on": sorted(with_variants),
                     "homellm": "document_masking on, grad_clip 1.0, eval/checkpoint only "
                                "after the last step",
                     "plain": "full logits + F.cross_entropy, clip_grad_norm_(1.0), "
                              "AdamW foreach, loss.item() every step"},
        "corpus": corpus, "presets": results, "attribution": attribution, "target_ratio": 0.9,
    }
    summary["fast_quartile"] = fast_figures(summary)
    out = args.out / f"train_cpu-{started[:10]}T{started[11:13]}{started[14:16]}Z.json"
    write_json(out, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
