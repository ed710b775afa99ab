"""Does the real engine accept the commands homellm writes? (issue 13, point 7)

For every catalog model x context {32K, 128K} x GPUs {1, 2} x every layout ``plan serve``
offers, this script:

1. writes the model's ``config.json`` (the catalog's fields plus ``architectures``, as
   transformers' ``save_pretrained`` names the class) into a folder without weights;
2. writes a stack file with ``homellm plan serve NAME --write`` (the catalog name, as a user
   types it), checks that its ``source`` is the repo id, and gets each replica's command from
   ``homellm check -c FILE --json``;
3. hands the command, with the repo id replaced by the folder, to a probe run by the engine's
   own venv (``scripts/vllm_probe.py``, ``scripts/sglang_probe.py``), which feeds it to the
   engine's own argument parser and model-config validation;
4. writes the table into docs/engines.md (between the engine-acceptance markers) and the full
   record under benchmarks/results/engine_acceptance/.

The engine venvs come from ``scripts/engine_venvs.sh``. Run it with homellm's venv:
``.venv/bin/python scripts/engine_acceptance.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# overridable so that the test suite can run the documented command without touching these
DOC = Path(os.environ.get("ENGINE_ACCEPTANCE_DOC", ROOT / "docs" / "engines.md"))
RESULTS = Path(os.environ.get("ENGINE_ACCEPTANCE_RESULTS",
                              ROOT / "benchmarks" / "results" / "engine_acceptance"))
VENVS = ROOT / ".venv-engines"
MARK_START = "<!-- engine-acceptance:start -->"
MARK_END = "<!-- engine-acceptance:end -->"
CONTEXTS = (32768, 131072)
GPU_SETS = ("1xrtx-pro-6000", "2xrtx-pro-6000")
ENGINES = ("vllm", "sglang")
PROBES = {"vllm": ROOT / "scripts" / "vllm_probe.py",
          "sglang": ROOT / "scripts" / "sglang_probe.py"}
PROBE_PREFIX = "PROBE "  # marks the probe's result lines among the engine's own log lines
LAYOUT_ORDER = ("replicas", "tp", "pp")
REPRODUCE = "scripts/engine_venvs.sh && .venv/bin/python scripts/engine_acceptance.py"


class Status(StrEnum):
    ACCEPTED = "accepted"                # the engine's parser and model config took it
    REFUSED = "refused"                  # the engine's own code raised
    NOTHING_FITS = "nothing-fits"        # plan serve: no layout fits, nothing written
    NOT_OFFERED = "not-offered"          # this layout does not fit; plan serve does not offer it
    PLAN_REFUSED = "plan-refuses"        # plan serve itself refuses the case (exit 2)
    HOMELLM_REFUSED = "homellm-refused"  # plan serve --write or check refused its own plan
    PROBE_FAILED = "probe-failed"        # the probe gave no answer (crash, timeout)
    NO_ENGINE = "no-engine"              # the engine's venv is not installed


@dataclass(frozen=True)
class Case:
    model: str       # catalog short name, as `homellm plan models` lists it
    repo: str        # Hugging Face repo id: what the written stack file's `source` must be
    gpus: str        # --gpus value
    context: int     # --context value

    @property
    def key(self) -> str:
        return f"{self.model}|{self.gpus}|{self.context}"

    @property
    def gpu_count(self) -> int:
        return int(self.gpus.split("x", 1)[0])


@dataclass
class Row:
    """One stack file (one case, one layout) for one engine, and what became of it."""

    case: Case
    layout: str                      # replicas | tp | pp | "" when nothing fits
    engine: str
    status: Status
    message: str = ""                # the engine's (or homellm's) exact words
    stage: str = ""                  # where the engine stopped: parse, model_config, ...
    where: str = ""                  # the engine source line that raised
    commands: list[list[str]] = field(default_factory=list)   # argv after the engine's head
    engine_config: str = ""          # how far create_engine_config got on CPU
    engine_context: int = 0          # the context the engine's model config settled on
    rope: str = ""                   # the RoPE scaling the engine's model config holds
    homellm_notes: list[str] = field(default_factory=list)    # defects seen on the way

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["case"] = asdict(self.case)
        data["status"] = self.status.value
        return data


# --- the matrix and the config.json copies ------------------------------------------------


def matrix(entries: Iterable[Any], contexts: Iterable[int] = CONTEXTS,
           gpu_sets: Iterable[str] = GPU_SETS) -> list[Case]:
    """Every catalog entry x context x GPU set, in catalog order."""
    contexts, gpu_sets = list(contexts), list(gpu_sets)
    return [Case(e.name, e.repo, gpus, ctx) for e in entries for ctx in contexts
            for gpus in gpu_sets]


def architecture_for(model_type: str) -> str:
    """The causal-LM class transformers' auto registry maps ``model_type`` to: the name
    ``save_pretrained`` writes into ``architectures`` (and vLLM's registry is keyed on)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    except KeyError:
        raise SystemExit(f"model_type {model_type!r}: no causal-LM class in transformers' "
                         "registry") from None


def hf_config_text(config: dict[str, Any]) -> str:
    """``config.json`` as transformers writes it (``to_json_string``: indent 2, keys sorted,
    trailing newline), with ``architectures`` added."""
    data = {**config, "architectures": [architecture_for(config["model_type"])]}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_model_folder(folder: Path, config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(hf_config_text(config), "utf-8")
    return folder


# --- homellm: plan, write, check --------------------------------------------------------------


def homellm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("homellm") or str(Path(sys.executable).with_name("homellm"))
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def plan_json(case: Case, env: dict[str, str]) -> tuple[dict[str, Any] | None, str, Status]:
    """``plan serve --json`` for the case: (plan, "", ...) or (None, homellm's error line,
    PLAN_REFUSED for its usage/config refusal (exit 2), else HOMELLM_REFUSED)."""
    done = homellm("plan", "serve", case.model, "--gpus", case.gpus, "--context",
                   str(case.context), "--json", env=env)
    try:
        return json.loads(done.stdout), "", Status.ACCEPTED
    except ValueError:
        error = f"plan serve exit {done.returncode}: {one_line(done.stderr + done.stdout)}"
        refused = Status.PLAN_REFUSED if done.returncode == 2 else Status.HOMELLM_REFUSED
        return None, error, refused


def offered_layouts(plan: dict[str, Any]) -> list[str]:
    """The layouts plan serve offers (those that fit), the recommended one first."""
    fitting = [k for k in LAYOUT_ORDER if plan["layouts"].get(k, {}).get("fits")]
    recommended = plan.get("recommended")
    return sorted(fitting, key=lambda k: (k != recommended, LAYOUT_ORDER.index(k)))


def cli_has_layout_option(env: dict[str, str]) -> bool:
    return "--layout" in homellm("plan", "serve", "--help", env=env).stdout


def write_stack_file(case: Case, layout: str, plan: dict[str, Any], path: Path,
                     env: dict[str, str], layout_option: bool) -> str:
    """Write the layout's stack file the way a user would get it; "" or homellm's error.

    The recommended layout (or any, once ``plan serve`` has ``--layout``) through the CLI's
    ``--write``; the others through ``write_stack(layout=...)``, the function ``--write``
    calls, on the same plan."""
    if layout == plan.get("recommended") or layout_option:
        extra = ["--layout", layout] if layout_option else []
        done = homellm("plan", "serve", case.model, "--gpus", case.gpus, "--context",
                       str(case.context), "--write", str(path), *extra, env=env)
        if not path.exists():
            return f"plan serve --write exit {done.returncode}: " \
                   f"{one_line(done.stderr + done.stdout)}"
        return ""
    from homellm.errors import HomellmError
    from homellm.plan.inputs import resolve_gpus, resolve_plan_model
    from homellm.plan.serve import plan_serve
    from homellm.plan.stackfile import write_stack

    try:
        full = plan_serve(resolve_plan_model(case.model), resolve_gpus(case.gpus, None),
                          context=case.context, concurrency=1, dtype="bfloat16")
        write_stack(path, full, source=case.model, layout=layout)
    except HomellmError as exc:
        return f"write_stack(layout={layout!r}): {exc}"
    return ""


def fix_source(path: Path, repo: str) -> str:
    """The written ``source`` must be the repo id; if not, say so and set it (so the engine
    still gets checked). Returns the note, "" when the file was right."""
    data = yaml.safe_load(path.read_text("utf-8"))
    (_, model), = data["models"].items()
    if model["source"] == repo:
        return ""
    note = f"plan serve --write wrote source: {model['source']} (expected the repo id {repo})"
    text = path.read_text("utf-8").replace(f"source: {model['source']}", f"source: {repo}", 1)
    path.write_text(text, "utf-8")
    return note


def as_engine(path: Path, engine: str) -> Path:
    """The same stack file for another engine: SGLang's names for the engine_args that
    plan serve writes for vLLM (gpu_memory_utilization -> mem_fraction_static,
    pipeline_parallel_size -> pp_size)."""
    if engine == "vllm":
        return path
    renames = {"gpu_memory_utilization": "mem_fraction_static",
               "pipeline_parallel_size": "pp_size"}
    text = path.read_text("utf-8").replace("engine: vllm", f"engine: {engine}", 1)
    for old, new in renames.items():
        text = text.replace(f"{old}:", f"{new}:")
    out = path.with_name(f"{path.stem}.{engine}{path.suffix}")
    out.write_text(text, "utf-8")
    return out


def check_commands(path: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    """Each replica's argv from ``homellm check --json``; ([], error line) if check refuses."""
    done = homellm("check", "-c", str(path), "--json", env=env)
    if done.returncode != 0:
        return [], f"check exit {done.returncode}: {one_line(done.stderr + done.stdout)}"
    return [replica["command"] for replica in json.loads(done.stdout)["replicas"]], ""


def engine_argv(argv: list[str], engine: str, source: str, folder: Path) -> list[str]:
    """What the engine's parser sees: the argv after ``vllm serve`` / ``sglang.launch_server``,
    with the repo id replaced by the config-only folder."""
    head = "serve" if engine == "vllm" else "sglang.launch_server"
    if head not in argv:
        raise ValueError(f"not a {engine} command: {argv[:4]}")
    rest = argv[argv.index(head) + 1:]
    return [str(folder) if arg == source else arg for arg in rest]


def without_port(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--port":
            skip = True
            continue
        if not arg.startswith("--port="):
            out.append(arg)
    return out


# --- the probes -----------------------------------------------------------------------------


def probe_python(engine: str, venvs: Path | None = None) -> Path | None:
    python = (venvs or VENVS) / engine / "bin" / "python"
    return python if python.exists() else None


def parse_probe_output(text: str) -> dict[str, dict[str, Any]]:
    """The probe's result lines (``PROBE {json}``) by id; everything else is engine logging."""
    results: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.startswith(PROBE_PREFIX):
            continue
        try:
            result = json.loads(line[len(PROBE_PREFIX):])
        except ValueError:
            continue
        if isinstance(result, dict) and "id" in result:
            results[str(result["id"])] = result
    return results


def run_probe(engine: str, jobs: list[dict[str, Any]], log: Path, timeout_s: float,
              extra_env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    python = probe_python(engine)
    if python is None or not jobs:
        return {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("PYTHONPATH", None)  # the engine's venv, nothing of homellm's
    payload = "".join(json.dumps(job) + "\n" for job in jobs)
    try:
        done = subprocess.run([str(python), str(PROBES[engine])], input=payload,
                              capture_output=True, text=True, env=env, timeout=timeout_s,
                              check=False)
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"timed out after {timeout_s:.0f} s\n" + (
            exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or ""))
    log.write_text(out + "\n--- stderr ---\n" + err, "utf-8")
    return parse_probe_output(out)


def rope_text(rope: Any) -> str:
    """``{"rope_type": "yarn", "factor": 4.0, ...}`` -> "yarn ×4"; "" for none or default."""
    if not isinstance(rope, dict):
        return ""
    kind = rope.get("rope_type") or rope.get("type") or ""
    if kind in ("", "default"):
        return ""
    factor = rope.get("factor")
    return f"{kind} ×{factor:g}" if isinstance(factor, int | float) else str(kind)


def fold(row: Row, results: list[dict[str, Any] | None]) -> None:
    """A row's status from its replicas' probe results: refused if any was refused."""
    if not results or any(r is None for r in results):
        row.status, row.message = Status.PROBE_FAILED, "the probe gave no result (see its log)"
        return
    for result in results:
        assert result is not None
        row.engine_config = result.get("engine_config") or result.get("without_device", "")
        row.engine_context = int(result.get("max_model_len") or result.get("context_len") or 0)
        row.rope = rope_text(result.get("rope"))
        if not result["accepted"]:
            row.status, row.stage = Status.REFUSED, result["stage"]
            row.message, row.where = result["error"], result.get("where", "")
            return
    row.status = Status.ACCEPTED


# --- the run --------------------------------------------------------------------------------


def case_rows(case: Case, folder: Path, work: Path, env: dict[str, str], engines: list[str],
              layout_option: bool) -> list[Row]:
    """Plan, write and check one case: a row per layout and engine, each row's commands
    ready for the probe (status PROBE_FAILED until it answers) or its verdict already."""
    plan, error, status = plan_json(case, env)
    if plan is None:
        return [Row(case, "", e, status, error) for e in engines]
    layouts = offered_layouts(plan)
    if not layouts:
        return [Row(case, "", e, Status.NOTHING_FITS, plan.get("reason", "")) for e in engines]
    rows: list[Row] = []
    for kind in LAYOUT_ORDER:
        if kind not in plan["layouts"]:
            continue
        if kind not in layouts:
            error = plan["layouts"][kind].get("error") or "does not fit"
            rows += [Row(case, kind, e, Status.NOT_OFFERED, error) for e in engines]
            continue
        stack = work / "stacks" / f"{case.model}-{case.gpus}-{case.context}-{kind}.yaml"
        stack.parent.mkdir(parents=True, exist_ok=True)
        error = write_stack_file(case, kind, plan, stack, env, layout_option)
        if error:
            rows += [Row(case, kind, e, Status.HOMELLM_REFUSED, error) for e in engines]
            continue
        notes = [note] if (note := fix_source(stack, case.repo)) else []
        for engine in engines:
            row = Row(case, kind, engine, Status.PROBE_FAILED, homellm_notes=list(notes))
            rows.append(row)
            argvs, error = check_commands(as_engine(stack, engine), env)
            if error:
                row.status, row.message = Status.HOMELLM_REFUSED, error
                continue
            row.commands = [engine_argv(a, engine, case.repo, folder) for a in argvs]
            if probe_python(engine) is None:
                row.status = Status.NO_ENGINE
                row.message = f"no {engine} venv under {VENVS} (scripts/engine_venvs.sh)"
    return rows


def build_rows(cases: list[Case], work: Path, env: dict[str, str], engines: list[str],
               catalog: dict[str, Any], workers: int = 3
               ) -> tuple[list[Row], dict[str, list[dict[str, Any]]], dict[int, list[str]]]:
    """Plan, write and check every case (``workers`` at a time: homellm's CLI runs as
    subprocesses); the rows, the probe jobs per engine, and each row's job ids by its index."""
    folders = {name: write_model_folder(work / "models" / name, catalog[name].config)
               for name in dict.fromkeys(c.model for c in cases)}
    layout_option = cli_has_layout_option(env)

    def one(numbered: tuple[int, Case]) -> list[Row]:
        n, case = numbered
        print(f"[{n + 1}/{len(cases)}] {case.key}", file=sys.stderr, flush=True)
        return case_rows(case, folders[case.model], work, env, engines, layout_option)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = [row for rows_of_case in pool.map(one, enumerate(cases)) for row in rows_of_case]
    jobs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    job_ids: dict[int, list[str]] = {}
    probed: dict[tuple[str, ...], str] = {}
    for index, row in enumerate(rows):
        if row.status is not Status.PROBE_FAILED:
            continue
        ids = []
        for i, argv in enumerate(row.commands):
            # replicas differ only in --port, which no config check reads: probe once
            key = (row.engine, *without_port(argv))
            if key not in probed:
                probed[key] = f"{index}.{i}"
                jobs[row.engine].append({"id": probed[key], "argv": argv})
            ids.append(probed[key])
        job_ids[index] = ids
    return rows, jobs, job_ids


def engine_versions(engines: list[str]) -> dict[str, str]:
    versions = {}
    for engine in engines:
        python = probe_python(engine)
        if python is None:
            versions[engine] = "not installed"
            continue
        done = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                               f"print(m.version('{engine}'), m.version('torch'), "
                               "m.version('transformers'))"],
                              capture_output=True, text=True, check=False, timeout=120)
        parts = done.stdout.split()
        versions[engine] = (f"{engine} {parts[0]} (torch {parts[1]}, transformers {parts[2]})"
                            if len(parts) == 3 else f"unknown: {one_line(done.stderr)}")
    return versions


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.src is not None:  # another homellm source tree (e.g. `git archive` of a commit)
        sys.path.insert(0, str(args.src))
        os.environ["PYTHONPATH"] = str(args.src)
    from homellm import __version__
    from homellm.models_catalog import CATALOG

    engines = args.engines
    catalog = {e.name: e for e in CATALOG}
    names = args.models or list(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise SystemExit(f"--models: not in the catalog: {', '.join(unknown)}")
    cases = matrix([catalog[n] for n in names], args.contexts, args.gpus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engine-acceptance-") as tmp:
        work = Path(tmp)
        # a bare HOMELLM_HOME: no stored calibration changes the plans
        env = {**os.environ, "HOMELLM_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
        rows, jobs, job_ids = build_rows(cases, work, env, engines, catalog)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%MZ")
        def probe_engine(engine: str) -> dict[str, dict[str, Any]]:
            print(f"probing {len(jobs[engine])} {engine} commands", file=sys.stderr, flush=True)
            log = work / f"{engine}-probe.log"
            found = run_probe(engine, jobs[engine], log, args.timeout)
            shutil.copy(log, RESULTS / f"{engine}-probe-{stamp}.log")
            return found

        def probe_native() -> dict[str, Any]:
            """One command again on the platform vLLM detects by itself: where it stops."""
            first = jobs.get("vllm", [])[:1]
            if not first:
                return {}
            return run_probe("vllm", first, work / "native.log", args.timeout,
                             {"VLLM_PROBE_PLATFORM": "native"}).get(first[0]["id"], {})

        # one engine per core: the probes are independent processes
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {engine: pool.submit(probe_engine, engine) for engine in engines}
            native_future = pool.submit(probe_native)
            results = {engine: future.result() for engine, future in futures.items()}
            native = native_future.result()
        for index, ids in job_ids.items():
            row = rows[index]
            fold(row, [results[row.engine].get(i) for i in ids])
    record = {"date": stamp, "homellm": __version__, "git": args.src_commit or git_head(),
              "src": str(args.src or ROOT / "src"), "dirty": git_dirty(args.src),
              "versions": engine_versions(engines), "command": REPRODUCE,
              "vllm_native_platform": native,
              "contexts": list(args.contexts), "gpus": list(args.gpus),
              "counts": counts(rows), "rows": [r.to_json() for r in rows]}
    out = RESULTS / f"engine_acceptance-{stamp}.json"
    out.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    record["json_path"] = (str(out.relative_to(ROOT)) if out.is_relative_to(ROOT)
                           else str(out))
    if args.doc:
        update_doc(DOC, render_section(record))
    return record


def git_dirty(src: Path | None) -> list[str]:
    """Files under src/ that differ from the commit (a shared working tree moves)."""
    if src is not None:
        return []
    done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                          capture_output=True, text=True, check=False)
    return [line[3:] for line in done.stdout.splitlines()]


def git_head() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


def counts(rows: list[Row]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        per = out.setdefault(row.engine, {})
        per[row.status.value] = per.get(row.status.value, 0) + 1
    return out


# --- the report -------------------------------------------------------------------------------

_CELL = {Status.ACCEPTED: "ok", Status.NOTHING_FITS: "no fit", Status.NOT_OFFERED: "—",
         Status.NO_ENGINE: "n/a"}
_LOUD = (Status.REFUSED, Status.HOMELLM_REFUSED, Status.PROBE_FAILED)  # defects: bold


def cell(row: Row, notes: dict[str, int]) -> str:
    if row.status is Status.ACCEPTED:
        text = "ok" + (f", {row.rope}" if row.rope else "")
        if row.engine_context != row.case.context:  # the engine settled on another context
            text += f", ctx {row.engine_context:,}"
    elif row.status in _CELL:
        text = _CELL[row.status]
    else:
        words = f"{row.status.value}: {row.message}"
        number = notes.setdefault(words, len(notes) + 1)
        name = "REFUSED" if row.status is Status.REFUSED else row.status.value
        text = f"**{name} [{number}]**" if row.status in _LOUD else f"{name} [{number}]"
    return text + (" (src)" if row.homellm_notes else "")


def columns_of(rows: list[Row]) -> list[tuple[str, str]]:
    """(gpus, layout) columns in a stable order: 1 GPU, then each 2-GPU layout."""
    seen = {(r.case.gpus, r.layout) for r in rows if r.layout}
    return sorted(seen, key=lambda c: (c[0], LAYOUT_ORDER.index(c[1])))


def engine_table(rows: list[Row]) -> list[str]:
    notes: dict[str, int] = {}
    cols = columns_of(rows)
    head = ["model", "context"] + [f"{g.split('x')[0]} GPU {lay}" for g, lay in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    by_case: dict[tuple[str, int], dict[tuple[str, str], Row]] = {}
    order: list[tuple[str, int]] = []
    for row in rows:
        key = (row.case.model, row.case.context)
        if key not in by_case:
            by_case[key] = {}
            order.append(key)
        if row.layout:
            by_case[key][(row.case.gpus, row.layout)] = row
        else:  # nothing fits on this GPU set: every layout column of it says so
            for col in cols:
                if col[0] == row.case.gpus:
                    by_case[key][col] = row
    for key in order:
        cells = [cell(by_case[key][c], notes) if c in by_case[key] else "" for c in cols]
        lines.append(f"| {key[0]} | {key[1] // 1024}K | " + " | ".join(cells) + " |")
    wheres = {f"{r.status.value}: {r.message}": (r.stage, r.where) for r in rows}
    if notes:
        lines.append("")
    for words, number in notes.items():
        stage, where = wheres.get(words, ("", ""))
        at = f" (stage {stage}, raised at {code(where)})" if where else ""
        lines.append(f"[{number}] {words}{at}")
    return lines


def render_section(record: dict[str, Any]) -> str:
    rows = [row_from_json(r) for r in record["rows"]]
    lines = [MARK_START, "",
             f"Run {record['date']} on homellm {record['homellm']} (commit {record['git']}), "
             "CPU only, config.json copies without weights. Reproduce with:", "",
             "```", REPRODUCE, "```", "",
             f"Full record: `{record.get('json_path', 'benchmarks/results/engine_acceptance/')}`."
             " \"ok\": the engine's own argument parser and model-config validation took every "
             "replica's command; \"no fit\": plan serve found no layout and wrote nothing; "
             "\"—\": that layout does not fit, so it is not offered; \"plan-refuses\": plan "
             "serve itself refuses the context in one line (exit 2); \"yarn ×4\": the RoPE "
             "scaling the engine's model config holds; \"(src)\": the written `source` was not "
             "the repo id (set right to go on). Counts are stack files (one per layout).", ""]
    before = record.get("before")
    if before:
        said = "; ".join(f"{engine}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
                         for engine, c in before["counts"].items())
        refused = dict.fromkeys(f"{r['case']['model']} {r['case']['context'] // 1024}K"
                                for r in before["rows"] if r["status"] == Status.REFUSED)
        lines += [f"The same matrix against commit {before['git']} ({before['date']}, "
                  f"`{before['json_path']}`): {said}. Refused: {', '.join(refused) or 'none'}.",
                  ""]
    for engine, version in record["versions"].items():
        mine = [r for r in rows if r.engine == engine]
        counted = ", ".join(f"{n} {s}" for s, n in sorted(record["counts"].get(engine,
                                                                                 {}).items()))
        lines += [f"**{version}**: {counted}.", ""]
        lines += [platform_note(engine, mine, record), ""]
        lines += [*engine_table(mine), ""]
    lines.append(MARK_END)
    return "\n".join(lines)


def code(text: Any) -> str:
    """``text`` as inline Markdown code (an engine message may hold backticks itself)."""
    return "`" + str(text).replace("`", "'") + "`"


def platform_note(engine: str, rows: list[Row], record: dict[str, Any]) -> str:
    """How far the engine's own code got on this machine without a GPU, and how."""
    stops = sorted({r.engine_config for r in rows if r.engine_config})
    said = "; ".join(code(s) for s in stops) or "not reached"
    if engine == "vllm":
        native = record.get("vllm_native_platform") or {}
        before = (f"On the platform it detects by itself ({native.get('platform', '?')}) vLLM "
                  f"stops at stage {code(native.get('stage', '?'))}: "
                  f"{code(native.get('error', '?'))} ({code(native.get('where', '?'))}). "
                  if native.get("error") else "")
        return (before + "So the probe sets `VLLM_TARGET_DEVICE=cpu` (vLLM's own switch to "
                "its CPU platform). After the model config, `create_engine_config()` (what "
                f"`vllm serve` does next) gave: {said}.")
    if engine == "sglang":
        return ("Without a GPU, SGLang's resolution stops before the model config at: "
                f"{said}; so each command was checked again with `--device cpu` added "
                "(SGLang's own CPU device), and the table is that second run.")
    return ""


def row_from_json(data: dict[str, Any]) -> Row:
    fields = {**data, "case": Case(**data["case"]), "status": Status(data["status"])}
    return Row(**fields)


def update_doc(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (append it, under a heading, if absent)."""
    text = path.read_text("utf-8")
    if MARK_START in text and MARK_END in text:
        before = text[:text.index(MARK_START)]
        after = text[text.index(MARK_END) + len(MARK_END):]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n## Do the engines accept our commands?\n\n" + section + "\n"
    path.write_text(text, "utf-8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="catalog names (default: all)")
    parser.add_argument("--contexts", nargs="*", type=int, default=list(CONTEXTS))
    parser.add_argument("--gpus", nargs="*", default=list(GPU_SETS))
    parser.add_argument("--engines", nargs="*", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds for each engine's probe run")
    parser.add_argument("--no-doc", dest="doc", action="store_false",
                        help="do not rewrite docs/engines.md")
    parser.add_argument("--src", type=Path, default=None,
                        help="homellm's src/ folder to test (default: this checkout's)")
    parser.add_argument("--render", type=Path, default=None, metavar="RECORD",
                        help="only rewrite the docs section from a stored record's JSON")
    parser.add_argument("--before", type=Path, default=None, metavar="RECORD",
                        help="with --render: also summarise this earlier record")
    parser.add_argument("--src-commit", default="",
                        help="with --src: the commit it was exported from, for the record")
    return parser.parse_args(argv)


def iter_refusals(record: dict[str, Any]) -> Iterator[str]:
    for row in record["rows"]:
        if row["status"] not in (Status.ACCEPTED.value, Status.NOT_OFFERED.value,
                                 Status.NOTHING_FITS.value):
            case = row["case"]
            yield (f"{row['engine']} {case['model']} {case['gpus']} {case['context']} "
                   f"{row['layout']}: {row['status']} [{row['stage']}] {row['message']} "
                   f"{row['where']}")


def stored_record(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text("utf-8"))
    where = path.resolve()
    record["json_path"] = str(where.relative_to(ROOT)) if where.is_relative_to(ROOT) else str(path)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:  # the doc section again from a stored record, no engine run
        record = stored_record(args.render)
        if args.before is not None:
            record["before"] = stored_record(args.before)
        update_doc(DOC, render_section(record))
        return 0
    record = run(args)
    print(json.dumps(record["counts"]))
    for line in iter_refusals(record):
        print(line)
    print(f"record: {record['json_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
