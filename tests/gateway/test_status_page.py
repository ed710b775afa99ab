"""The status page at `/`, rendered by a real headless Chromium (Debian's package), against a
gateway in front of FAKE backends (homellm.gateway.fakebackend)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.gateway.conftest import Harness, info

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_status_page_html(harness: Harness) -> None:
    fake = harness.fake(name="a")
    gw = harness.gateway([info(fake, "tiny/0"), info(free_port(), "tiny/1", "backup")],
                         wait_ready=["tiny/0"])
    with gw.http() as http:
        http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "<b>"}]})
        page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="replica-tiny/0"' in page.text and 'id="replica-tiny/1"' in page.text
    assert "<b>" not in page.text.split("<body>")[1].replace("<b>1/2</b>", "")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                    "chromium; .ci/run installs it)")
def test_status_page_in_headless_chromium(harness: Harness, tmp_path: Path) -> None:
    fake = harness.fake(name="a")
    gw = harness.gateway([info(fake, "tiny/0"), info(free_port(), "tiny/1", "backup")],
                         wait_ready=["tiny/0"])
    with gw.http() as http:
        for _ in range(3):
            http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 2,
                                                    "messages": [{"role": "user", "content": "x"}]})
    url = f"http://127.0.0.1:{gw.port}/"
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    row = dom.split('id="replica-tiny/0"')[1].split("</tr>")[0]
    assert ">ready<" in row and ">3<" in row  # state and the live request count
    dead = dom.split('id="replica-tiny/1"')[1].split("</tr>")[0]
    assert ">starting<" in dead and "Cannot connect" in dead  # never healthy, and why
    assert "1/2" in dom
    shot = tmp_path / "status.png"  # a person can look at it: the test keeps it in tmp_path
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1100,360", url],
                   capture_output=True, timeout=60, check=False)
    assert shot.exists() and shot.stat().st_size > 5_000
