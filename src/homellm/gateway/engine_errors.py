"""An engine's HTTP error answer, reshaped into OpenAI's error body with the engine's own words.

Engines answer errors in their own shapes: FastAPI's ``{"detail": "..."}`` or
``{"detail": [{"loc": [...], "msg": "..."}]}`` (transformers serve, vLLM's validation),
``{"error": "..."}``, ``{"object": "error", "message": ...}`` (older vLLM, SGLang), OpenAI's own
``{"error": {"message": ...}}`` (vLLM, llama.cpp), or plain text (``Internal Server Error``).
The client gets OpenAI's shape, the only one ``/openapi.json`` publishes, carrying the engine's
message, never a bare "backend answered HTTP 500".

The status is kept when the published API declares it; any other 4xx becomes 400 and any other
5xx 502, the engine's own status then named in the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

#: engine statuses passed on unchanged (each declared in /openapi.json)
PASSED_ON = frozenset({400, 404, 413, 422, 429, 500, 502, 503, 504})
MAX_MESSAGE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class EngineError:
    """What the client gets for an engine's error answer."""

    status: int
    message: str
    body: bytes  # OpenAI's error shape


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _from_detail(detail: Any) -> tuple[str | None, str | None]:
    """FastAPI's ``detail``: a string, or a list of validation errors (message, param)."""
    if isinstance(detail, list):
        parts, param = [], None
        for item in detail:
            if not isinstance(item, dict):
                continue
            loc = [str(p) for p in item.get("loc", []) if p != "body"] \
                if isinstance(item.get("loc"), list) else []
            msg = _text(item.get("msg")) or "invalid"
            parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
            param = param or (".".join(loc) or None)
        return ("; ".join(parts) or None), param
    if isinstance(detail, str | int | float):
        return _text(str(detail)), None
    return (json.dumps(detail)[:MAX_MESSAGE_CHARS] if detail is not None else None), None


def _parse(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) the engine gave, each None when it gave none."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return _text(body.decode("utf-8", "replace")), None, None, None
    if not isinstance(parsed, dict):
        return _text(body.decode("utf-8", "replace")), None, None, None
    error = parsed.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return (_text(error.get("message")), _text(error.get("type")),
                _text(error.get("param")), str(code) if isinstance(code, str | int) else None)
    if _text(error):
        return _text(error), None, None, None
    if "detail" in parsed:
        message, param = _from_detail(parsed["detail"])
        return message, None, param, None
    if _text(parsed.get("message")):
        code = parsed.get("code")
        return (_text(parsed["message"]), _text(parsed.get("type")), _text(parsed.get("param")),
                str(code) if isinstance(code, str) else None)
    return _text(body.decode("utf-8", "replace")), None, None, None


def engine_error(status: int, body: bytes, backend: str) -> EngineError:
    """The client's answer for ``backend``'s error ``status`` with ``body``."""
    message, type_, param, code = _parse(body)
    if message is None:
        message = (f"the engine answered HTTP {status} {_reason(status)} with no details "
                   f"(backend {backend}; its log says more)")
    message = message[:MAX_MESSAGE_CHARS]
    out = status
    if status not in PASSED_ON:
        out = 400 if status < 500 else 502
        message = f"the engine answered HTTP {status} {_reason(status)}: {message}"
    if type_ is None:
        type_ = "invalid_request_error" if out < 500 else "server_error"
    if code is None:
        code = "engine_rejected" if out < 500 else "engine_error"
    error = {"message": message, "type": type_, "param": param, "code": code}
    return EngineError(out, message, json.dumps({"error": error}).encode())
