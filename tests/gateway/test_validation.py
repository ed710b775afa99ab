"""Request validation (gateway/validation.py) and engine error reshaping (engine_errors.py): pure
functions, plus the promise that /openapi.json's request schemas and the checks agree."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.openapi import from_dict

from homellm.gateway.backends import PROXY_PATHS
from homellm.gateway.engine_errors import engine_error
from homellm.gateway.openapi import openapi_document
from homellm.gateway.rules import INVALID_TYPE, INVALID_VALUE, MISSING
from homellm.gateway.validation import CHAT, COMPLETIONS, EMBEDDINGS, validate

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **fields}


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "m", "messages": "x"}, "messages", INVALID_TYPE),
    ({"model": "m"}, "messages", MISSING),
    ({"model": "m", "messages": []}, "messages", INVALID_VALUE),
    ({"model": "m", "messages": ["hi"]}, "messages[0]", INVALID_TYPE),
    ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role", MISSING),
    ({"model": "m", "messages": [{"role": "bob", "content": "x"}]}, "messages[0].role",
     INVALID_VALUE),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", MISSING),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     INVALID_TYPE),
    ({"model": "m", "messages": [{"role": "user", "content": None}]}, "messages[0].content",
     INVALID_TYPE),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text", MISSING),
    ({"model": "m", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "u"}}]}]}, "messages[0].content[0].type",
     INVALID_VALUE),
    ({"model": "m", "messages": [{"role": "assistant"}]}, "messages[0].content", MISSING),
    ({"model": "m", "messages": [{"role": "tool", "content": "42"}]},
     "messages[0].tool_call_id", MISSING),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "a"}]}]},
     "messages[0].tool_calls[0].type", MISSING),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{
        "id": "a", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]},
     "messages[0].tool_calls[0].function.arguments", INVALID_VALUE),
    ({"model": "m", "messages": [{"role": "user", "content": "\ud800"}]},
     "messages[0].content", INVALID_VALUE),
    (chat(max_tokens=-1), "max_tokens", INVALID_VALUE),
    (chat(max_tokens=0), "max_tokens", INVALID_VALUE),
    (chat(max_tokens=True), "max_tokens", INVALID_TYPE),
    (chat(max_tokens=2.5), "max_tokens", INVALID_TYPE),
    (chat(max_tokens=float("inf")), "max_tokens", INVALID_TYPE),
    (chat(max_tokens="3"), "max_tokens", INVALID_TYPE),
    (chat(max_completion_tokens=0), "max_completion_tokens", INVALID_VALUE),
    (chat(temperature=-5), "temperature", INVALID_VALUE),
    (chat(temperature=2.5), "temperature", INVALID_VALUE),
    (chat(temperature=5e-324), "temperature", INVALID_VALUE),
    (chat(temperature=float("nan")), "temperature", INVALID_VALUE),
    (chat(temperature="hot"), "temperature", INVALID_TYPE),
    (chat(top_p=0), "top_p", INVALID_VALUE),
    (chat(top_p=1.5), "top_p", INVALID_VALUE),
    (chat(n=2), "n", INVALID_VALUE),
    (chat(n=False), "n", INVALID_TYPE),
    (chat(stream="yes"), "stream", INVALID_TYPE),
    (chat(stream=1), "stream", INVALID_TYPE),
    (chat(stop=5), "stop", INVALID_TYPE),
    (chat(stop=[]), "stop", INVALID_VALUE),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", INVALID_VALUE),
    (chat(stop=["a", 1]), "stop[1]", INVALID_TYPE),
    (chat(seed=2**63), "seed", INVALID_VALUE),
    (chat(seed="x"), "seed", INVALID_TYPE),
    (chat(presence_penalty=3), "presence_penalty", INVALID_VALUE),
    (chat(frequency_penalty=-1), "frequency_penalty", INVALID_VALUE),
    (chat(frequency_penalty="x"), "frequency_penalty", INVALID_TYPE),
    (chat(logprobs=1), "logprobs", INVALID_TYPE),
    (chat(top_logprobs=21), "top_logprobs", INVALID_VALUE),
    (chat(tools="x"), "tools", INVALID_TYPE),
    (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", MISSING),
    (chat(stream_options=5), "stream_options", INVALID_TYPE),
    (chat(user=None), "user", INVALID_TYPE),
])
def test_chat_violations_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    violation = validate(CHAT, body)
    assert violation is not None
    assert (violation.param, violation.code) == (param, code), violation
    assert violation.message.startswith(param)


@pytest.mark.parametrize("body", [
    chat(),
    chat(max_tokens=4, stream=True, temperature=0, top_p=1, n=1, stop=["x"], seed=-(2**63),
         presence_penalty=-2, frequency_penalty=-0.5, logprobs=True, top_logprobs=20,
         user="u", stream_options={"include_usage": True}),
    chat(temperature=None, top_p=None, max_tokens=None, stop=None, n=None, seed=None),
    chat(temperature=1e-5, stop="", top_k=40, anything={"engine": "extension"}),
    chat(max_tokens=2.0, seed=-1.0),  # integers, as JSON Schema counts them
    {"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "s"}]},
        {"role": "user", "content": [{"type": "text", "text": "Привет 😀"},
                                     {"type": "image_url", "image_url": {"url": "data:x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "content": "", "name": "bot"},
    ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
])
def test_valid_chat_requests_pass(body: dict[str, Any]) -> None:
    assert validate(CHAT, body) is None


@pytest.mark.parametrize(("path", "body", "param"), [
    (COMPLETIONS, {"model": "m"}, "prompt"),
    (COMPLETIONS, {"model": "m", "prompt": ""}, "prompt"),
    (COMPLETIONS, {"model": "m", "prompt": []}, "prompt"),
    (COMPLETIONS, {"model": "m", "prompt": [[]]}, "prompt[0]"),
    (COMPLETIONS, {"model": "m", "prompt": "p", "best_of": 2}, "best_of"),
    (COMPLETIONS, {"model": "m", "prompt": "p", "logprobs": 6}, "logprobs"),
    (COMPLETIONS, {"model": "m", "prompt": "p", "echo": "yes"}, "echo"),
    (EMBEDDINGS, {"model": "m", "input": ""}, "input"),
    (EMBEDDINGS, {"model": "m", "input": ["a", 5]}, "input[1]"),
    (EMBEDDINGS, {"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format"),
    (EMBEDDINGS, {"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
])
def test_completion_and_embedding_violations(path: str, body: dict[str, Any],
                                              param: str) -> None:
    violation = validate(path, body)
    assert violation is not None and violation.param == param, violation


@pytest.mark.parametrize(("path", "body"), [
    (COMPLETIONS, {"model": "m", "prompt": "p", "max_tokens": 3, "echo": True, "logprobs": 5}),
    (COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}),
    (COMPLETIONS, {"model": "m", "prompt": [1, 2, 3]}),
    (COMPLETIONS, {"model": "m", "prompt": [[1, 2], [3]]}),
    (EMBEDDINGS, {"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
    (EMBEDDINGS, {"model": "m", "input": [[1, 2]], "dimensions": 8}),
])
def test_valid_completion_and_embedding_requests_pass(path: str, body: dict[str, Any]) -> None:
    assert validate(path, body) is None


PUBLISHED = from_dict(openapi_document({"m": PROXY_PATHS}, with_keys=False))


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, EMBEDDINGS])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True, phases=[Phase.generate])  # no shrinking: a failure reports fast
@given(data=st.data())
def test_what_the_published_schema_allows_passes(path: str, data: st.DataObject) -> None:
    """Every body /openapi.json allows passes validate(), and what it forbids (schemathesis'
    negative mode) is refused: the document and the checks are built from the same rules, and
    this keeps them so."""
    operation = PUBLISHED[path]["POST"]
    case = data.draw(operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    violation = validate(path, case.body)
    # the one check JSON Schema cannot state: a tool call's arguments must hold JSON
    assert violation is None or violation.message.endswith("must be a JSON text"), violation
    case = data.draw(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    if isinstance(case.body, dict) and case.body.get("model") == "m":
        assert validate(path, case.body) is not None, case.body


# -- engine errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "out", "message", "param"), [
    (422, b'{"detail":"Unexpected fields in the request: {\'foo\'}"}', 422,
     "Unexpected fields in the request: {'foo'}", None),
    (422, json.dumps({"detail": [{"loc": ["body", "messages", 0, "role"],
                                  "msg": "Field required", "type": "missing"}]}).encode(), 422,
     "messages.0.role: Field required", "messages.0.role"),
    (400, b'{"error": {"message": "too long", "type": "BadRequestError", "param": null, '
          b'"code": 400}}', 400, "too long", None),
    (400, b'{"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}', 400,
     "bad", None),
    (500, b'{"error": "CUDA out of memory"}', 500, "CUDA out of memory", None),
    (500, b"Internal Server Error", 500, "Internal Server Error", None),
    (501, b'{"error": {"message": "This server does not support embeddings.", "type": '
          b'"not_supported_error", "code": 501}}', 502,
     "the engine answered HTTP 501 Not Implemented: This server does not support embeddings.",
     None),
    (418, b"", 400, "the engine answered HTTP 418 I'm a Teapot: the engine answered HTTP 418 "
     "I'm a Teapot with no details (backend b/0; its log says more)", None),
])
def test_engine_errors_come_back_in_openai_shape(status: int, body: bytes, out: int,
                                                 message: str, param: str | None) -> None:
    error = engine_error(status, body, "b/0")
    parsed = json.loads(error.body)["error"]
    assert error.status == out
    assert parsed["message"] == message == error.message
    assert parsed["param"] == param
    assert parsed["type"] and parsed["code"]
    assert set(parsed) == {"message", "type", "param", "code"}
