"""Talk to a running gateway's admin API: what ``homellm status/drain/undrain/restart`` call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from homellm.config import StackConfig, load_stack
from homellm.errors import ConfigError, HomellmError
from homellm.up import ADMIN_KEY_FILE, default_run_dir


class AdminClient:
    def __init__(self, url: str, key: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"}
        self._timeout = timeout_s

    @classmethod
    def for_stack(cls, stack_file: Path, run_dir: Path | None = None) -> AdminClient:
        stack: StackConfig = load_stack(stack_file, check_sources=False)
        folder = run_dir or (Path(stack.run_dir) if stack.run_dir else default_run_dir(stack_file))
        key_file = folder / ADMIN_KEY_FILE
        try:
            key = key_file.read_text("utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"{key_file}: no admin key; is `homellm up -c {stack_file}` "
                              "running with this run folder (--run-dir)?") from None
        host = stack.gateway.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return cls(f"http://{f'[{host}]' if ':' in host else host}:{stack.gateway.port}", key)

    def _call(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        try:
            response = httpx.request(method, self.url + path, headers=self._headers,
                                     params=params or None, timeout=self._timeout,
                                     trust_env=False)
        except httpx.HTTPError as exc:
            raise HomellmError(f"no gateway answering on {self.url} ({type(exc).__name__}); "
                               "is `homellm up` running?") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise HomellmError(f"{self.url}{path}: HTTP {response.status_code}: {message}")
        return response.json()

    def replicas(self) -> list[dict[str, Any]]:
        return self._call("GET", "/admin/replicas")["replicas"]

    def drain(self, model: str, index: int, wait_s: float = 300.0) -> dict[str, Any]:
        self._timeout = wait_s + 10
        return self._call("POST", f"/admin/replicas/{model}/{index}/drain", wait_s=wait_s)

    def undrain(self, model: str, index: int) -> dict[str, Any]:
        return self._call("POST", f"/admin/replicas/{model}/{index}/undrain")

    def restart(self, model: str, index: int) -> dict[str, Any]:
        return self._call("POST", f"/admin/replicas/{model}/{index}/restart")

    def reload(self) -> dict[str, Any]:
        return self._call("POST", "/admin/reload")
