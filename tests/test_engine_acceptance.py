"""scripts/engine_acceptance.py's own logic, without vLLM or SGLang: the matrix it enumerates,
the config.json it writes, the commands it takes from homellm, the probe lines it reads, how
it folds and reports them; and probe_common's account of where an exception was raised."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from homellm.models_catalog import CATALOG

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ea = _load("engine_acceptance")
probe_common = _load("probe_common")


def test_matrix_is_every_catalog_model_at_32k_and_128k_on_1_and_2_gpus() -> None:
    cases = ea.matrix(CATALOG)
    assert len(cases) == len(CATALOG) * 2 * 2
    assert {(c.context, c.gpus) for c in cases} == {
        (32768, "1xrtx-pro-6000"), (32768, "2xrtx-pro-6000"),
        (131072, "1xrtx-pro-6000"), (131072, "2xrtx-pro-6000")}
    assert [c.model for c in cases[::4]] == [e.name for e in CATALOG]
    assert all(c.repo == next(e.repo for e in CATALOG if e.name == c.model) for c in cases)
    assert len({c.key for c in cases}) == len(cases)
    assert {c.gpu_count for c in cases} == {1, 2}


@pytest.mark.parametrize("entry", CATALOG, ids=[e.name for e in CATALOG])
def test_config_json_is_written_as_transformers_writes_it(entry, tmp_path: Path) -> None:
    from transformers import AutoConfig

    folder = ea.write_model_folder(tmp_path / entry.name, entry.config)
    text = (folder / "config.json").read_text("utf-8")
    data = json.loads(text)
    # the catalog's fields, unchanged, plus the class name save_pretrained would put there
    assert {k: v for k, v in data.items() if k != "architectures"} == entry.config
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    loaded = AutoConfig.from_pretrained(folder)
    assert loaded.architectures == data["architectures"]
    assert loaded.model_type == entry.config["model_type"]
    assert loaded.max_position_embeddings == entry.config["max_position_embeddings"]
    # the class transformers itself would instantiate for this config
    from transformers import AutoModelForCausalLM
    model_class = AutoModelForCausalLM._model_mapping[type(loaded)]
    assert data["architectures"] == [model_class.__name__]


def test_architecture_names_the_hub_files_class() -> None:
    assert ea.architecture_for("qwen3_moe") == "Qwen3MoeForCausalLM"
    assert ea.architecture_for("gemma3_text") == "Gemma3ForCausalLM"
    with pytest.raises(SystemExit, match="no causal-LM class"):
        ea.architecture_for("no-such-type")


def test_probe_output_is_read_by_id_among_engine_log_lines() -> None:
    text = "\n".join([
        "INFO 12-02 14:00:00 [arg_utils.py:1] PROBE-like words but no prefix",
        'PROBE {"id": "0.0", "accepted": true, "stage": ""}',
        "PROBE {not json",
        'PROBE ["no", "id"]',
        "W1202 torch warnings",
        'PROBE {"id": "3.1", "accepted": false, "stage": "model_config", "error": "E"}',
    ])
    results = ea.parse_probe_output(text)
    assert set(results) == {"0.0", "3.1"}
    assert results["3.1"]["error"] == "E"
    assert ea.parse_probe_output("") == {}


def test_engine_argv_cuts_the_head_and_points_at_the_folder(tmp_path: Path) -> None:
    vllm = ["/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "serve", "Qwen/Qwen3-8B",
            "--host", "127.0.0.1", "--served-model-name", "qwen3-8b"]
    assert ea.engine_argv(vllm, "vllm", "Qwen/Qwen3-8B", tmp_path) == [
        str(tmp_path), "--host", "127.0.0.1", "--served-model-name", "qwen3-8b"]
    sglang = ["/venv/bin/python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-8B",
              "--tp-size", "2"]
    assert ea.engine_argv(sglang, "sglang", "Qwen/Qwen3-8B", tmp_path) == [
        "--model-path", str(tmp_path), "--tp-size", "2"]
    with pytest.raises(ValueError, match="not a vllm command"):
        ea.engine_argv(sglang, "vllm", "Qwen/Qwen3-8B", tmp_path)


def test_offered_layouts_are_those_that_fit_recommended_first() -> None:
    plan = {"recommended": "tp", "layouts": {"replicas": {"fits": False}, "tp": {"fits": True},
                                             "pp": {"fits": True}}}
    assert ea.offered_layouts(plan) == ["tp", "pp"]
    plan["recommended"] = None
    plan["layouts"]["tp"]["fits"] = plan["layouts"]["pp"]["fits"] = False
    assert ea.offered_layouts(plan) == []


def _row() -> object:
    return ea.Row(ea.Case("Qwen3-8B", "Qwen/Qwen3-8B", "2xrtx-pro-6000", 131072), "replicas",
                  "vllm", ea.Status.PROBE_FAILED)


def test_a_row_is_refused_if_any_replica_is_and_failed_if_one_has_no_answer() -> None:
    ok = {"accepted": True, "stage": "", "error": "", "engine_config": "passed",
          "max_model_len": 131072}
    bad = {"accepted": False, "stage": "model_config", "error": "ValueError: too long",
           "where": "vllm/config/model.py:2680"}
    row = _row()
    ea.fold(row, [ok, ok])
    assert row.status is ea.Status.ACCEPTED and row.engine_config == "passed"
    assert row.engine_context == 131072
    row = _row()
    ea.fold(row, [ok, bad])
    assert (row.status, row.stage, row.message, row.where) == (
        ea.Status.REFUSED, "model_config", "ValueError: too long", "vllm/config/model.py:2680")
    row = _row()
    ea.fold(row, [ok, None])
    assert row.status is ea.Status.PROBE_FAILED
    row = _row()
    ea.fold(row, [])
    assert row.status is ea.Status.PROBE_FAILED


def test_rope_scaling_is_shown_by_kind_and_factor() -> None:
    assert ea.rope_text({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}) == "yarn ×4"
    assert ea.rope_text({"rope_type": "llama3", "factor": 8.0}) == "llama3 ×8"
    assert ea.rope_text({"rope_type": "default", "rope_theta": 1e6}) == ""
    assert ea.rope_text({"rope_theta": 1e6, "rope_type": "yarn", "type": "default",
                         "factor": 3.25}) == "yarn ×3.25"   # SGLang's record keeps both keys
    assert ea.rope_text(None) == ""
    row = _row()
    ea.fold(row, [{"accepted": True, "max_model_len": 131072,
                   "rope": {"rope_type": "yarn", "factor": 4.0}}])
    assert ea.cell(row, {}) == "ok, yarn ×4"


def test_a_plan_that_refuses_is_told_apart_from_a_defect() -> None:
    notes: dict[str, int] = {}
    case = ea.Case("Qwen3-0.6B", "Qwen/Qwen3-0.6B", "1xrtx-pro-6000", 131072)
    planned = ea.Row(case, "", "vllm", ea.Status.PLAN_REFUSED, "plan serve exit 2: beyond")
    broken = ea.Row(case, "replicas", "vllm", ea.Status.HOMELLM_REFUSED, "check exit 2: x")
    assert ea.cell(planned, notes) == "plan-refuses [1]"
    assert ea.cell(broken, notes) == "**homellm-refused [2]**"


def test_the_doc_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    doc = tmp_path / "engines.md"
    doc.write_text("# Engines\n\nbefore\n", "utf-8")
    ea.update_doc(doc, f"{ea.MARK_START}\none\n{ea.MARK_END}")
    first = doc.read_text("utf-8")
    assert first.startswith("# Engines\n\nbefore\n") and "one" in first
    doc.write_text(first + "\nafter\n", "utf-8")
    ea.update_doc(doc, f"{ea.MARK_START}\ntwo\n{ea.MARK_END}")
    second = doc.read_text("utf-8")
    assert "two" in second and "one" not in second
    assert second.count(ea.MARK_START) == 1 and second.endswith("\nafter\n")


def test_the_report_numbers_each_refusal_with_its_source_line() -> None:
    case = ea.Case("Qwen3-8B", "Qwen/Qwen3-8B", "1xrtx-pro-6000", 131072)
    rows = [ea.Row(case, "replicas", "vllm", ea.Status.REFUSED, "ValueError: too long",
                   "model_config", "vllm/config/model.py:2680"),
            ea.Row(ea.Case("Qwen3-8B", "Qwen/Qwen3-8B", "1xrtx-pro-6000", 32768), "replicas",
                   "vllm", ea.Status.ACCEPTED, engine_context=32768),
            ea.Row(ea.Case("Qwen3-4B", "Qwen/Qwen3-4B", "1xrtx-pro-6000", 32768), "replicas",
                   "vllm", ea.Status.ACCEPTED, engine_context=16384)]
    lines = ea.engine_table(rows)
    assert lines[0] == "| model | context | 1 GPU replicas |"
    assert "| Qwen3-8B | 128K | **REFUSED [1]** |" in lines
    assert "| Qwen3-8B | 32K | ok |" in lines
    assert "| Qwen3-4B | 32K | ok, ctx 16,384 |" in lines
    assert lines[-1] == ("[1] refused: ValueError: too long (stage model_config, raised at "
                         "`vllm/config/model.py:2680`)")


ENGINE_SOURCE = """\
def derive(n):
    return check(n)


def check(n):
    if n > 4:
        raise ValueError(f"max_model_len ({n}) is greater than the derived max_model_len (4)")
    return n
"""


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch) -> ModuleType:
    """A stand-in engine package with a config check that raises, like vLLM's."""
    package = tmp_path / "fakeengine"
    package.mkdir()
    (package / "__init__.py").write_text("", "utf-8")
    (package / "config.py").write_text(ENGINE_SOURCE, "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fakeengine.config
    yield fakeengine.config
    sys.modules.pop("fakeengine.config", None)
    sys.modules.pop("fakeengine", None)


def _wrapped(fn, n: int) -> None:
    """As pydantic does with a ValueError from __post_init__: the words, not the frame."""
    try:
        fn(n)
    except ValueError as exc:
        raise RuntimeError(f"1 validation error for ModelConfig: Value error, {exc}") from None


@pytest.mark.parametrize("wrap", [False, True], ids=["raised", "re-raised outside"])
def test_the_spy_names_the_engine_line_that_raised(fake_engine, wrap: bool) -> None:
    package = str(Path(fake_engine.__file__).parent)
    result: dict = {}
    stages = probe_common.Stages(package, result)
    call = (lambda: _wrapped(fake_engine.derive, 8)) if wrap else (lambda: fake_engine.derive(8))
    assert stages.run("model_config", call) is None
    assert result["stage"] == "model_config"
    assert "max_model_len (8) is greater" in result["error"]
    assert result["error"].startswith("RuntimeError" if wrap else "ValueError")
    line = ENGINE_SOURCE.splitlines().index(
        '        raise ValueError(f"max_model_len ({n}) is greater than the derived '
        'max_model_len (4)")') + 1
    assert result["where"] == f"fakeengine/config.py:{line}"
    assert stages.run("model_config", lambda: fake_engine.derive(3)) == 3


def test_the_probe_protocol_runs_each_job_in_its_own_child(tmp_path: Path) -> None:
    """A real probe process over stdin/stdout with a stand-in engine: one PROBE line per job,
    a job that kills its child is reported, not fatal, and state does not leak."""
    script = tmp_path / "fake_probe.py"
    script.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "from probe_common import Stages, serve_jobs\n"
        "PKG = os.path.dirname(json.__file__)\n"
        "seen = []\n"
        "def probe(argv):\n"
        "    seen.append(argv)\n"
        "    if argv == ['die']:\n"
        "        os._exit(3)\n"
        "    result = {'accepted': False, 'stage': '', 'error': '', 'where': ''}\n"
        "    if Stages(PKG, result).run('parse', lambda: json.loads(argv[0])) is None:\n"
        "        return result\n"
        "    return {**result, 'accepted': True, 'seen': len(seen)}\n"
        "sys.exit(serve_jobs(probe, PKG))\n", "utf-8")
    jobs = [{"id": "a", "argv": ["[1]"]}, {"id": "b", "argv": ["die"]},
            {"id": "c", "argv": ["{"]}, {"id": "d", "argv": ["2"]}]
    import subprocess
    done = subprocess.run([sys.executable, str(script)], input="".join(
        json.dumps(j) + "\n" for j in jobs), capture_output=True, text=True, timeout=60,
        check=True)
    results = ea.parse_probe_output(done.stdout)
    assert results["a"]["accepted"] and results["a"]["seen"] == 1
    assert results["b"]["stage"] == "probe" and "died" in results["b"]["error"]
    assert results["c"]["stage"] == "parse" and results["c"]["where"].startswith("json/")
    assert results["d"]["seen"] == 1  # forked: the earlier jobs left nothing behind


def test_homellm_plan_write_and_check_give_the_commands_to_probe(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The real homellm CLI for one small case: every offered layout is written and checked,
    and each replica's command reaches the probe with the folder in place of the repo id."""
    venvs = tmp_path / "venvs"
    (venvs / "vllm" / "bin").mkdir(parents=True)
    (venvs / "vllm" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(ea, "VENVS", venvs)
    entry = next(e for e in CATALOG if e.name == "Qwen3-0.6B")
    cases = ea.matrix([entry], [32768], ["2xrtx-pro-6000"])
    env = {**__import__("os").environ, "HOMELLM_HOME": str(tmp_path / "home")}
    engines = ["vllm", "sglang"]
    rows, jobs, job_ids = ea.build_rows(cases, tmp_path, env, engines, {entry.name: entry})
    assert [(r.layout, r.engine) for r in rows] == [
        (layout, engine) for layout in ("replicas", "tp", "pp") for engine in engines]
    folder = str(tmp_path / "models" / "Qwen3-0.6B")
    for row in rows:
        assert row.commands and all(folder in argv for argv in row.commands), row.message
        assert all("Qwen/Qwen3-0.6B" not in argv for argv in row.commands)
        assert row.homellm_notes == [] or "source" in row.homellm_notes[0]
    vllm = [r for r in rows if r.engine == "vllm"]
    assert all(r.status is ea.Status.PROBE_FAILED for r in vllm)   # until the probe answers
    assert all(argv[0] == folder and "--max-model-len" in argv
               for r in vllm for argv in r.commands)
    assert len(vllm[0].commands) == 2                                # two replicas
    assert "--tensor-parallel-size" in vllm[1].commands[0]
    assert "--pipeline-parallel-size" in vllm[2].commands[0]
    sglang = [r for r in rows if r.engine == "sglang"]
    assert all(r.status is ea.Status.NO_ENGINE for r in sglang)
    assert "--context-length" in sglang[0].commands[0]
    assert "--mem-fraction-static" in sglang[0].commands[0]   # SGLang's name for it
    assert "--pp-size" in sglang[2].commands[0]
    # the two replicas differ only in --port: one probe job serves both
    assert len(jobs["vllm"]) == 3 and jobs["sglang"] == []
    first = rows.index(vllm[0])
    assert len(set(job_ids[first])) == 1 and len(job_ids[first]) == 2
    ea.fold(vllm[0], [{"accepted": True, "engine_config": "passed"}] * 2)
    assert vllm[0].status is ea.Status.ACCEPTED


def test_render_rewrites_the_section_from_a_stored_record(tmp_path: Path, monkeypatch) -> None:
    case = ea.Case("Qwen3-8B", "Qwen/Qwen3-8B", "1xrtx-pro-6000", 131072)
    row = ea.Row(case, "replicas", "vllm", ea.Status.REFUSED, "ValueError: `too` long",
                 "model_config", "vllm/config/model.py:2680")
    record = {"date": "2026-12-02T1500Z", "homellm": "0", "git": "abc", "versions":
              {"vllm": "vllm 0.33.0"}, "counts": {"vllm": {"refused": 1}},
              "vllm_native_platform": {}, "rows": [row.to_json()]}
    stored = tmp_path / "record.json"
    stored.write_text(json.dumps(record), "utf-8")
    doc = tmp_path / "engines.md"
    doc.write_text("# Engines\n", "utf-8")
    monkeypatch.setattr(ea, "DOC", doc)
    assert ea.main(["--render", str(stored)]) == 0
    text = doc.read_text("utf-8")
    assert "**vllm 0.33.0**: 1 refused." in text
    assert "| Qwen3-8B | 128K | **REFUSED [1]** |" in text
    assert "[1] refused: ValueError: `too` long (stage model_config, raised at " \
           "`vllm/config/model.py:2680`)" in text


def test_the_docs_reproduce_command_is_the_scripts() -> None:
    text = (ROOT / "docs" / "engines.md").read_text("utf-8")
    if ea.MARK_START not in text:
        pytest.skip("docs/engines.md has no engine-acceptance section yet")
    section = text[text.index(ea.MARK_START):text.index(ea.MARK_END)]
    assert f"```\n{ea.REPRODUCE}\n```" in section
    first, second = ea.REPRODUCE.split(" && ")
    assert (ROOT / shlex.split(first)[0]).exists()
    _python, script, *args = shlex.split(second)
    assert (ROOT / script).exists()
    ea.parse_args(args)


@pytest.mark.slow
def test_the_docs_reproduce_command_runs_where_the_engine_venvs_exist(tmp_path: Path) -> None:
    """The command exactly as docs/engines.md gives it (needs the engines' venvs: GBs, and
    about half an hour on 2 cores); its doc and record go to tmp_path."""
    if ea.probe_python("vllm") is None:
        pytest.skip("no vLLM venv: scripts/engine_venvs.sh builds it")
    import os
    import subprocess
    doc = tmp_path / "engines.md"
    doc.write_text("# Engines\n", "utf-8")
    env = {**os.environ, "ENGINE_ACCEPTANCE_DOC": str(doc),
           "ENGINE_ACCEPTANCE_RESULTS": str(tmp_path / "results")}
    done = subprocess.run(["bash", "-c", ea.REPRODUCE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"record: {tmp_path / 'results'}" in done.stdout
    assert ea.MARK_START in doc.read_text("utf-8")
