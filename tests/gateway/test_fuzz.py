"""Fuzz the gateway's public API with schemathesis against its own OpenAPI document (bounded):
valid and invalid bodies, headers and keys, sent over real HTTP to a gateway in front of a FAKE
backend (homellm.gateway.fakebackend). No answer may be a 5xx or carry a traceback, every answer
must be documented, and the gateway must still serve a normal request afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    status_code_conformance,
)

from homellm.gateway.backends import PROXY_PATHS
from homellm.gateway.openapi import openapi_document
from homellm.keys import KeyFile, KeyVerifier
from tests.gateway.conftest import MODEL, Harness, LoopThread, RunningGateway, info

EXAMPLES = 50  # per operation (both modes): about 250 requests in all, under 10 s

schema = schemathesis.openapi.from_dict(openapi_document(
    {MODEL: PROXY_PATHS, "other": PROXY_PATHS}, with_keys=True))
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES,
    deterministic=True, database="none",
    with_security_parameters=False,  # every case carries our key, so bodies reach the backends
)


class Fuzzed:
    def __init__(self, gw: RunningGateway, key: str) -> None:
        self.gw, self.key = gw, key


@pytest.fixture(scope="module")
def fuzzed(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    harness = Harness(loop_thread)
    fake, other = harness.fake(name="a", tokens=4), harness.fake(name="b", tokens=4)
    gw = harness.gateway([info(fake, "tiny/0"), info(other, "other/0", model="other")])
    keys_file: Path = tmp_path_factory.mktemp("fuzz") / "keys.json"
    key = KeyFile(keys_file).add("fuzzer")
    gw.gw.keys = KeyVerifier(keys_file)
    yield Fuzzed(gw, key)
    harness.close()


def no_traceback(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    text = response.text or ""
    assert "Traceback" not in text and 'File "' not in text, f"a traceback in: {text[:300]}"
    return True


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_public_api_fuzz(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    headers = {"Authorization": f"Bearer {fuzzed.key}"}
    case.call_and_validate(base_url=fuzzed.gw.url, headers=headers, timeout=10,
                           # what the schema forbids the gateway refuses itself (what it allows
                           # passes: tests/gateway/test_validation.py, save tool-call arguments
                           # that are not JSON, which JSON Schema cannot state)
                           checks=[not_a_server_error, status_code_conformance, no_traceback,
                                   negative_data_rejection])


def test_still_serves_after_the_fuzz(fuzzed: Fuzzed) -> None:
    reply = httpx.post(f"{fuzzed.gw.url}/v1/chat/completions", timeout=10,
                       headers={"Authorization": f"Bearer {fuzzed.key}"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["choices"]
    doc = httpx.get(f"{fuzzed.gw.url}/openapi.json",
                    headers={"Authorization": f"Bearer {fuzzed.key}"}).json()
    assert doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["model"]["enum"] == ["other", MODEL]
    assert httpx.get(f"{fuzzed.gw.url}/openapi.json").status_code == 401
