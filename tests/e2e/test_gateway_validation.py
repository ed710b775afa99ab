"""No client can eject a backend: `homellm up` with two REAL `transformers serve` replicas of the
demo model, bad requests, an engine's own refusals, a route the engine lacks, and a bounded
schemathesis run against the gateway's published /openapi.json.

Before the gateway validated requests, `"messages": "x"`, `max_tokens: -1` or `temperature: -5`
made `transformers serve` answer 500, the gateway counted each 500 against the backend, and two
such requests ejected both replicas (every client got 503 for the cooldown).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from homellm.engines.transformers import ROUTES as TRANSFORMERS_ROUTES
from homellm.gateway.openapi import openapi_document
from tests.e2e.conftest import UpProcess

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "hi"}]
GOOD = {"model": "tiny", "messages": MESSAGES, "max_tokens": 3}
MAX_TOKENS = 3  # fuzzed requests generate at most this many tokens: the run stays short
EXAMPLES = 150  # per operation and mode: chat and completions give well over 500 requests
STATUSES: Counter[int] = Counter()


def _pool(stack: UpProcess) -> dict[str, Any]:
    ready = httpx.get(f"{stack.url}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    return ready.json()["models"]["tiny"]


def _metric(stack: UpProcess, name: str) -> float:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_two_bad_requests_then_a_good_one_is_served(two_replica_stack: UpProcess) -> None:
    url = f"{two_replica_stack.url}/v1/chat/completions"
    bad = [({**GOOD, "messages": "x"}, "messages"), ({**GOOD, "max_tokens": -1}, "max_tokens"),
           ({**GOOD, "temperature": -5}, "temperature"),
           ({**GOOD, "messages": [{"role": "user", "content": 5}]}, "messages[0].content")]
    with httpx.Client(timeout=60) as http:
        for _ in range(2):
            for body, param in bad:
                response = http.post(url, json=body)
                assert response.status_code == 400, response.text
                error = response.json()["error"]
                assert error["param"] == param and error["type"] == "invalid_request_error"
                assert param in error["message"]
        good = http.post(url, json=GOOD)
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["message"]["role"] == "assistant"
    assert _pool(two_replica_stack) == {"healthy": 2, "total": 2}
    assert _metric(two_replica_stack, "homellm_gateway_ejections_total") == 0


def test_an_engine_refusal_comes_back_with_its_own_message(two_replica_stack: UpProcess) -> None:
    """Requests the gateway lets through that transformers serve refuses: its 422 for a field it
    does not know, its 400 for a prompt that is not a string; OpenAI's shape, no retry."""
    client = openai.OpenAI(base_url=f"{two_replica_stack.url}/v1", api_key="unused",
                           max_retries=0, timeout=60)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2,  # type: ignore[arg-type]
                                       extra_body={"no_such_field": 1})
    assert refused.value.body["message"] == (  # type: ignore[index]
        "Unexpected fields in the request: {'no_such_field'}")
    assert refused.value.response.headers["x-homellm-attempts"] == "1"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny", prompt=["hi", "there"], max_tokens=2)
    assert bad.value.body == {"message": "prompt must be a string.",  # type: ignore[comparison-overlap]
                              "type": "invalid_request_error", "param": None,
                              "code": "engine_rejected"}
    assert _pool(two_replica_stack) == {"healthy": 2, "total": 2}


def test_embeddings_are_neither_advertised_nor_forwarded(two_replica_stack: UpProcess) -> None:
    with httpx.Client(base_url=two_replica_stack.url, timeout=30) as http:
        response = http.post("/v1/embeddings", json={"model": "tiny", "input": "hi"})
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "route_not_served" and "/v1/embeddings" in error["message"]
        assert "x-homellm-backend" not in response.headers  # no engine was asked
        document = http.get("/openapi.json").json()
        assert "/v1/embeddings" not in document["paths"]
        assert "/v1/chat/completions" in document["paths"]
        models = http.get("/v1/models").json()["data"]
    assert models[0]["routes"] == ["/v1/chat/completions", "/v1/completions"]


# the document this stack's gateway publishes (the first fuzz case checks it is the same one);
# built here because schemathesis needs it when the tests are collected
PUBLISHED = openapi_document({"tiny": TRANSFORMERS_ROUTES}, with_keys=False)
fuzzed = schemathesis.openapi.from_dict(PUBLISHED).include(method="POST")
fuzzed.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES,
    deterministic=True, database="none")


def _bounded(body: Any) -> None:
    """At most MAX_TOKENS new tokens per valid request (transformers' default is 1024)."""
    if not isinstance(body, dict):
        return
    for field in ("max_tokens", "max_completion_tokens"):
        if type(body.get(field)) in (int, float) and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS


@fuzzed.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_real_engines_fuzzed_from_the_published_schema(case: schemathesis.Case,
                                                       two_replica_stack: UpProcess) -> None:
    if not STATUSES:
        assert httpx.get(f"{two_replica_stack.url}/openapi.json").json() == PUBLISHED
        assert _pool(two_replica_stack) == {"healthy": 2, "total": 2}
    _bounded(case.body)
    response = case.call(base_url=two_replica_stack.url, timeout=60)
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                             response_schema_conformance])
    assert response.status_code not in (500, 503), response.text[:500]


def test_after_the_fuzz_the_pool_is_whole(two_replica_stack: UpProcess) -> None:
    total = sum(STATUSES.values())
    print(f"fuzzed real engines: {total} requests, by status {dict(sorted(STATUSES.items()))}")
    assert total >= 500, STATUSES
    assert STATUSES[500] == 0 and STATUSES[503] == 0, STATUSES
    assert STATUSES[200] > 0 and STATUSES[400] > 0, STATUSES  # both kinds really reached it
    assert _pool(two_replica_stack) == {"healthy": 2, "total": 2}
    assert _metric(two_replica_stack, "homellm_gateway_ejections_total") == 0
    good = httpx.post(f"{two_replica_stack.url}/v1/chat/completions", json=GOOD, timeout=60)
    assert good.status_code == 200, good.text
