"""How close is ``homellm plan`` to published measurements? Predicted vs published for every
reference row of ``tests/plan/reference_measurements.py`` (vLLM memory logs and ``vllm bench
serve`` results), with the error and whether it is inside the stated tolerance; also the
training-time rows of the advice the mission quotes (one RTX PRO 6000, 10B tokens).

The suite fails when a row leaves its tolerance (tests/plan/test_serve_accuracy.py); this
script records all figures, misses included, for BENCHMARKS.md.

    python benchmarks/plan_accuracy.py [--out benchmarks/results/plan_accuracy]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the reference table lives with the tests that enforce it

from tests.plan.reference_measurements import (  # noqa: E402
    MEMORY_ROWS,
    MEMORY_TOLERANCE,
    SPEED_ROWS,
    SPEED_TOLERANCE,
    predict_memory,
    predict_speed,
)

from homellm.hardware import find_gpu  # noqa: E402
from homellm.models_catalog import train_preset_spec  # noqa: E402
from homellm.plan.train import plan_train  # noqa: E402

# the advice (MISSION.md) and 6·N·D at 40 % MFU (plan-facts §5, attention included)
TRAIN_ROWS = [("125M", 1024, "1.5–2 h", (10.3, 14.2)), ("355M", 1024, "4–6 h", (29.4, 40.0)),
              ("1.3B", 2048, "12–20 h", (108.0, 147.0)), ("3B", 2048, "24–48 h", (248.0, 340.0))]


def rows() -> list[dict[str, Any]]:
    out = []
    for row in MEMORY_ROWS:
        figures = predict_memory(row)
        for name, published in row["published"].items():
            out.append(_row(row, name, float(figures[name].value), published, "GiB",
                            MEMORY_TOLERANCE, name in row.get("unpredicted", ())))
    for row in SPEED_ROWS:
        predicted = predict_speed(row)
        for name, published in row["published"].items():
            unit = "tok/s" if name == "output_tok_s" else "ms"
            out.append(_row(row, name, float(predicted[name]), published, unit,
                            SPEED_TOLERANCE, False))
    return out


def _row(row: dict[str, Any], name: str, predicted: float, published: float, unit: str,
         tolerance: float, unpredicted: bool) -> dict[str, Any]:
    error = predicted / published - 1
    return {"id": row["id"], "figure": name, "unit": unit, "predicted": round(predicted, 3),
            "published": published, "error": round(error, 4), "tolerance": tolerance,
            "within": abs(error) <= tolerance, "asserted": not unpredicted,
            "source": row["source"]}


def train_rows() -> list[dict[str, Any]]:
    gpu = find_gpu("rtx-pro-6000")
    out = []
    for preset, context, advice, (low, high) in TRAIN_ROWS:
        plan = plan_train(train_preset_spec(preset), [gpu], tokens=10e9, context=context)
        hours = next(f.value for f in plan.compute if f.key == "train.time_h")
        out.append({"preset": preset, "context": context, "advice": advice,
                    "predicted_h": round(hours, 1), "plan_facts_h": [low, high],
                    "within": low * 0.8 <= hours <= high * 1.2})
    return out


def table(serve: list[dict[str, Any]], train: list[dict[str, Any]]) -> str:
    lines = ["| row | figure | predicted | published | error | tolerance | |",
             "|---|---|---|---|---|---|---|"]
    for r in serve:
        verdict = ("within" if r["within"] else "**miss**") + ("" if r["asserted"]
                                                               else " (not asserted)")
        lines.append(f"| {r['id']} | {r['figure']} | {r['predicted']:,.2f} {r['unit']} | "
                     f"{r['published']:,.2f} {r['unit']} | {r['error']:+.1%} | "
                     f"±{r['tolerance']:.0%} | {verdict} |")
    lines += ["", "| preset | context | the advice | plan (h) | plan-facts range (h) | |",
              "|---|---|---|---|---|---|"]
    for r in train:
        lines.append(f"| {r['preset']} | {r['context']} | {r['advice']} | {r['predicted_h']} | "
                     f"{r['plan_facts_h'][0]}–{r['plan_facts_h'][1]} | "
                     f"{'within' if r['within'] else '**miss**'} |")
    return "\n".join(lines)


def plot(serve: list[dict[str, Any]], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['id']}\n{r['figure']}" for r in serve]
    ratios = [r["predicted"] / r["published"] for r in serve]
    colors = ["tab:green" if r["within"] else "tab:red" for r in serve]
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(serve) + 1.5))
    ax.barh(range(len(serve)), ratios, color=colors)
    ax.axvline(1.0, color="black", lw=1)
    for edge in (0.7, 0.9, 1.1, 1.3):
        ax.axvline(edge, color="grey", ls=":", lw=1)
    ax.set_yticks(range(len(serve)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("predicted ÷ published (memory ±10 %, speed ±30 %)")
    ax.set_title("homellm plan vs published measurements")
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from homellm.fsutil import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/plan_accuracy"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    serve, train = rows(), train_rows()
    text = table(serve, train)
    atomic_write_text(args.out / "results.json", json.dumps(
        {"date": time.strftime("%Y-%m-%d"), "serve": serve, "train": train}, indent=1) + "\n")
    atomic_write_text(args.out / "table.md", text + "\n")
    plot(serve, args.out / "accuracy.png")
    print(text)
    asserted = [r for r in serve if r["asserted"]]
    print(f"\n{sum(r['within'] for r in asserted)}/{len(asserted)} asserted serve figures within "
          f"tolerance; {sum(r['within'] for r in train)}/{len(train)} training rows; files in "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
