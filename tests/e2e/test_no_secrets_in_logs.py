"""A prompt and an API key sent through `homellm up` (debug logging, a real engine) appear in
no log: not in up's own output, not in the engine logs of the run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from homellm.keys import KeyFile
from tests.conftest import free_port
from tests.e2e.conftest import stop_up, wait_ready, write_stack

pytestmark = pytest.mark.slow


def test_prompt_and_key_never_logged(demo_model: Path, tmp_path: Path) -> None:
    gateway = free_port()
    stack = write_stack(tmp_path / "homellm.yaml", demo_model, gateway, [free_port()])
    stack.write_text(stack.read_text().replace("gateway:\n", "gateway:\n"
                                               "  api_keys_file: keys.json\n"))
    key = KeyFile(tmp_path / "keys.json").add("alice")
    run_dir, log = tmp_path / "run", tmp_path / "up.log"
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "homellm.cli", "--log-level", "debug",
                                    "up", "-c", str(stack), "--run-dir", str(run_dir)],
                                   stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "COLUMNS": "200"})
    url = f"http://127.0.0.1:{gateway}"
    prompt = "секретный-промпт-7f3a9c"
    try:
        wait_ready(url, process, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model="tiny", max_tokens=4,
                                       messages=[{"role": "user", "content": prompt}])
        list(client.chat.completions.create(model="tiny", max_tokens=4, stream=True,
                                            messages=[{"role": "user", "content": prompt}]))
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key=key + "x", max_retries=0
                          ).chat.completions.create(model="tiny", messages=[
                              {"role": "user", "content": prompt}])
    finally:
        assert stop_up(process) == 0, log.read_text()
    files = [log, *(p for p in run_dir.rglob("*") if p.is_file() and p.name != "admin.key")]
    assert len(files) >= 2  # up's output and at least one engine log
    secret = key.split("-", 2)[2]
    for file in files:
        text = file.read_text(errors="replace")
        assert prompt not in text, f"the prompt is in {file}"
        assert secret not in text and key not in text, f"the API key is in {file}"
