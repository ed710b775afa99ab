"""Request validation for the proxy routes: the OpenAI fields engines choke on, checked once.

A bad field in a request must get a 400 naming it, before any engine sees it: ``transformers
serve`` answers 500 to ``"messages": "x"``, ``max_tokens: -1`` or ``temperature: -5``, and an
engine's 500 tells the client nothing. Bounds and types follow OpenAI's published API (a JSON
``true`` is not an integer there, nor here; ``NaN`` is not a number).

Each route's rules are one :class:`~homellm.gateway.rules.Obj` built from the small rule
objects of :mod:`homellm.gateway.rules`. The same objects give the
JSON Schema that ``/openapi.json`` publishes (:func:`request_schema`), so what the document
declares valid and what the gateway lets through cannot drift apart. Fields not named here
(engine extensions such as ``top_k``) pass through unchecked.

Everything here is pure and allocation-light: a valid request costs one dictionary lookup per
field it carries.
"""

from __future__ import annotations

from typing import Any

from homellm.gateway.rules import (
    INT64_MAX,
    INT64_MIN,
    AnyOf,
    Array,
    Bool,
    Int,
    Num,
    Obj,
    Rule,
    Str,
    Tagged,
    Violation,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"


# -- OpenAI's fields ---------------------------------------------------------------------------

def _text() -> Rule:
    return Str(nullable=False)


_TEXT_PART = Obj({"text": _text()}, required=("text",))
_IMAGE_PART = Obj({"image_url": Obj({"url": _text(), "detail": Str(
    enum=("auto", "low", "high"), nullable=False)}, required=("url",))}, required=("image_url",))
_AUDIO_PART = Obj({"input_audio": Obj({"data": _text(), "format": _text()},
                                      required=("data", "format"))}, required=("input_audio",))
_FILE_PART = Obj({"file": Obj({"file_data": _text(), "file_id": _text(),
                               "filename": _text()})}, required=("file",))
_REFUSAL_PART = Obj({"refusal": _text()}, required=("refusal",))


def _content(*parts: tuple[str, Obj], nullable: bool = False) -> Rule:
    return AnyOf("a string or an array of content parts", Str(nullable=False),
                 Array(Tagged("type", dict(parts)), min_items=1, nullable=False),
                 nullable=nullable)


_TEXT_ONLY = _content(("text", _TEXT_PART))
_TOOL_CALL = Obj({"id": _text(), "type": Str(enum=("function",), nullable=False),
                  "function": Obj({"name": _text(), "arguments": Str(json=True, nullable=False)},
                                  required=("name", "arguments"))},
                 required=("id", "type", "function"))
_NAME = {"name": Str(nullable=False)}

MESSAGE = Tagged("role", {
    "system": Obj({"content": _TEXT_ONLY, **_NAME}, required=("content",)),
    "developer": Obj({"content": _TEXT_ONLY, **_NAME}, required=("content",)),
    "user": Obj({"content": _content(("text", _TEXT_PART), ("image_url", _IMAGE_PART),
                                     ("input_audio", _AUDIO_PART), ("file", _FILE_PART)),
                 **_NAME}, required=("content",)),
    "assistant": Obj({"content": _content(("text", _TEXT_PART), ("refusal", _REFUSAL_PART),
                                          nullable=True),
                      "tool_calls": Array(_TOOL_CALL, nullable=False),
                      "refusal": Str(), **_NAME},
                     one_of_required=("content", "tool_calls")),
    "tool": Obj({"content": _TEXT_ONLY, "tool_call_id": _text()},
                required=("content", "tool_call_id")),
})

_TOOL = Obj({"type": Str(enum=("function",), nullable=False),
             "function": Obj({"name": Str(min_length=1, nullable=False),
                              "description": Str(nullable=False),
                              "parameters": Obj({}), "strict": Bool()},
                             required=("name",))},
            required=("type", "function"))

_STOP = AnyOf("a string or an array of 1 to 4 strings", Str(nullable=False),
              Array(Str(nullable=False), min_items=1, max_items=4, nullable=False))
_TOKENS = Array(Int(minimum=0, nullable=False), min_items=1, nullable=False)


def _inputs() -> Rule:
    """A completion's prompt or an embedding's input: engines refuse empty ones."""
    text = Str(min_length=1, nullable=False)
    return AnyOf("a non-empty string, an array of them, token ids or arrays of token ids",
                 text, Array(text, min_items=1, nullable=False), _TOKENS,
                 Array(_TOKENS, min_items=1, nullable=False), nullable=False)

_SAMPLING: dict[str, Rule] = {
    "max_tokens": Int(minimum=1),
    # 0 is greedy; a positive value below 1e-5 overflows the logits / temperature division
    # (transformers serve answers 500 to 5e-324; vLLM treats anything below 1e-5 as greedy)
    "temperature": Num(0, 2, floor=1e-5),
    "top_p": Num(0, 1, exclusive_minimum=True),
    "n": Int(minimum=1, maximum=1),  # one choice per request: transformers serve ignores n
    "stream": Bool(),
    "stream_options": Obj({"include_usage": Bool()}, nullable=True),
    "stop": _STOP,
    "seed": Int(minimum=INT64_MIN, maximum=INT64_MAX),
    "presence_penalty": Num(-2, 2),
    # OpenAI allows [-2, 2]; transformers serve turns it into repetition_penalty = 1 + value,
    # which must be positive (it answers 500 to -1 and below)
    "frequency_penalty": Num(-1, 2, exclusive_minimum=True,
                             why=" (transformers serve takes it as repetition_penalty = 1 + "
                                 "frequency_penalty, which must be positive)"),
    "user": Str(nullable=False),
}

CHAT_REQUEST = Obj({
    "messages": Array(MESSAGE, min_items=1, nullable=False),
    "max_completion_tokens": Int(minimum=1),
    **_SAMPLING,
    "logprobs": Bool(),
    "top_logprobs": Int(minimum=0, maximum=20),
    "tools": Array(_TOOL, nullable=False),
}, required=("messages",))

COMPLETION_REQUEST = Obj({
    "prompt": _inputs(),
    **_SAMPLING,
    "logprobs": Int(minimum=0, maximum=5),
    "echo": Bool(),
    "best_of": Int(minimum=1, maximum=1),  # like n: one completion per request
    "suffix": Str(),
}, required=("prompt",))

EMBEDDING_REQUEST = Obj({
    "input": _inputs(),
    "encoding_format": Str(enum=("float", "base64")),
    "dimensions": Int(minimum=1),
    "user": Str(nullable=False),
}, required=("input",))

REQUESTS: dict[str, Obj] = {CHAT: CHAT_REQUEST, COMPLETIONS: COMPLETION_REQUEST,
                            EMBEDDINGS: EMBEDDING_REQUEST}


def validate(path: str, payload: dict[str, Any]) -> Violation | None:
    """The first violation in a parsed request body for ``path``, or None when it may go on.

    ``model`` is checked by the caller (it picks the pool); everything else named in the route's
    rules is checked here.
    """
    rules = REQUESTS.get(path)
    if rules is None:
        return None
    return rules.check(payload, "")


def request_schema(path: str) -> dict[str, Any]:
    """The JSON Schema of ``path``'s request body (without ``model``), as validate() applies it."""
    return REQUESTS[path].schema()
