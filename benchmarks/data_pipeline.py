"""How fast is the data pipeline on 2 cores, and how much memory does it take? (issue 7 §6)

Generates a synthetic MySQL-style dump of realistic dialogue rows (Russian text, quotes,
backslashes, newlines, NULLs, e-mails and phones to scrub) of ``--mb`` megabytes, then times
the whole pipeline as a user runs it: ``homellm data ingest`` (read → clean → dedupe → scrub →
split), ``homellm tokenizer train`` and ``homellm data tokenize``, each its own process, with
peak RSS of the process tree (``/usr/bin/time``-free: ``resource.getrusage(RUSAGE_CHILDREN)``).
In the same run it times the tokenize step's baseline: ``tokenizers``' batch encoding called
directly on the same rendered texts, so the overhead is a ratio, not an absolute.

    python benchmarks/data_pipeline.py [--mb 100] [--out benchmarks/results/data_pipeline]

Targets: 590 MB in ≤ 10 min with peak RSS ≤ 2 GB; tokenize within 1.3× of direct encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAP = ("table=messages,conversation=chat_id,role=sender,text=body,order=id,"
       "roles=user:user,bot:assistant")
_WORDS_TEXT = (
    "я ты он она мы вы они это что как так вот ну да нет не ни и а но или если когда "
    "потому почему где здесь там сегодня завтра вчера время день ночь утро вечер дом "
    "работа жизнь душа сердце слово мысль вопрос ответ правда мир свет путь дорога "
    "молитва вера надежда любовь книга письмо друг брат сестра отец мать помощь "
    "спасибо пожалуйста хорошо плохо понимаю думаю знаю хочу могу надо нужно"
)
WORDS = tuple(_WORDS_TEXT.split())


def _mysql_quote(text: str) -> str:
    return "'" + (text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
                  .replace("\r", "\\r").replace("\x00", "\\0")) + "'"


def generate_dump(path: Path, megabytes: float, seed: int = 0) -> dict[str, int]:
    """A mysqldump-like file: CREATE TABLE, then multi-row INSERTs of chat messages."""
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    rows = conversations = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write("-- MySQL dump 10.13  Distrib 8.0.36\n/*!40101 SET NAMES utf8mb4 */;\n"
                  "CREATE TABLE `messages` (\n  `id` int NOT NULL,\n  `chat_id` int,\n"
                  "  `sender` varchar(16),\n  `body` text,\n  PRIMARY KEY (`id`)\n);\n")
        while out.tell() < target:
            values = []
            for _ in range(200):
                chat = conversations + rng.randrange(0, 50)  # a dump is not sorted by chat
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 60))]
                text = " ".join(words).capitalize() + rng.choice([".", "?", "!", "..."])
                if rng.random() < 0.05:
                    text += ' Он сказал: "don\'t" — и ушёл.\nНовая строка \\ косая.'
                if rng.random() < 0.02:
                    text += (f" Пишите: user{rng.randrange(1000)}@mail.ru, тел. "
                             f"+7 (9{rng.randrange(100):02d}) 123-45-67")
                body = "NULL" if rng.random() < 0.01 else _mysql_quote(text)
                sender = rng.choice(("'user'", "'bot'"))
                rows += 1
                values.append(f"({rows},{chat},{sender},{body})")
            conversations += 4
            out.write("INSERT INTO `messages` VALUES " + ",".join(values) + ";\n")
    return {"rows": rows, "bytes": path.stat().st_size}


def timed(argv: list[str], log: Path) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "COLUMNS": "120"}, check=False)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])} failed: {log.read_text()[-2000:]}")
    # ru_maxrss of RUSAGE_CHILDREN is the largest single descendant (KiB on Linux)
    return {"wall_s": round(wall, 2), "cpu_s": round(after.ru_utime + after.ru_stime
                                                     - before.ru_utime - before.ru_stime, 2),
            "peak_rss_mib": round(after.ru_maxrss / 1024, 1)}


def direct_encoding(dataset: Path, tok_dir: Path) -> dict[str, Any]:
    """The baseline: render the train split's texts, then ``encode_batch_fast`` them."""
    sys.path.insert(0, str(ROOT / "src"))
    from homellm.data.layout import DatasetLayout
    from homellm.tokenizer import iter_records, load_tokenizer, record_text

    tokenizer = load_tokenizer(tok_dir)
    layout = DatasetLayout(dataset)
    began = time.perf_counter()
    texts = [record_text(r) for split in ("train", "val", "test")
             for r in iter_records(layout.split_file(split))]
    read_s = time.perf_counter() - began
    began = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 4096):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(texts[i:i + 4096]))
    return {"wall_s": round(time.perf_counter() - began, 2), "read_and_render_s": round(read_s, 2),
            "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/data_pipeline"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    homellm = [sys.executable, "-m", "homellm.cli"]
    with tempfile.TemporaryDirectory(prefix="homellm-data-bench-") as tmpname:
        tmp = Path(tmpname)
        dump = tmp / "dialogues.sql"
        began = time.perf_counter()
        facts = generate_dump(dump, args.mb)
        print(f"dump: {facts['bytes'] / 2**20:.1f} MiB, {facts['rows']:,} rows "
              f"({time.perf_counter() - began:.1f} s to generate)", flush=True)
        ds, tok = tmp / "ds", tmp / "tok"
        steps = {
            "ingest": timed([*homellm, "data", "ingest", str(dump), "-o", str(ds), "--map", MAP],
                            args.out / "ingest.log"),
        }
        print(f"ingest: {steps['ingest']}", flush=True)
        steps["tokenizer_train"] = timed([*homellm, "tokenizer", "train", str(ds), "-o",
                                          str(tok), "--vocab", str(args.vocab),
                                          "--sample-mb", "64"], args.out / "tokenizer.log")
        print(f"tokenizer train: {steps['tokenizer_train']}", flush=True)
        steps["tokenize"] = timed([*homellm, "data", "tokenize", str(ds), "--tokenizer",
                                   str(tok)], args.out / "tokenize.log")
        print(f"tokenize: {steps['tokenize']}", flush=True)
        direct = direct_encoding(ds, tok)
        print(f"direct encode_batch_fast: {direct}", flush=True)
    mib = facts["bytes"] / 2**20
    pipeline_s = steps["ingest"]["wall_s"] + steps["tokenize"]["wall_s"]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%MZ", time.gmtime()), "cpus": os.cpu_count(),
        "dump_mib": round(mib, 1), "rows": facts["rows"], "steps": steps, "direct": direct,
        "ingest_mib_per_s": round(mib / steps["ingest"]["wall_s"], 2),
        "pipeline_mib_per_s": round(mib / pipeline_s, 2),
        "projected_590mb_min": round(590 / (mib / pipeline_s) / 60, 1),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in steps.values()),
        "tokenize_vs_direct": round(steps["tokenize"]["wall_s"] / direct["wall_s"], 2),
        "load_before": os.getloadavg()[0],
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
