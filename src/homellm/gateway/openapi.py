"""The gateway's public API as an OpenAPI 3.1 document (``GET /openapi.json``).

It describes what the gateway itself guarantees: the OpenAI-compatible routes each model's engine
serves, the request fields the gateway checks (their schemas come from validation.py's rules, so
the document and the checks cannot disagree), the model names, and every status it may answer
with, each in OpenAI's error shape (an engine's own error answers are reshaped into it by
engine_errors.py). Fields beyond these are passed on to the engine untouched. Tools read it
(schemathesis fuzzes the gateway against it in the tests;
client generators may use it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from homellm.gateway.validation import CHAT, COMPLETIONS, EMBEDDINGS, request_schema

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}

_ERRORS = {
    "400": "the body is not a JSON object, lacks a model, or a field is invalid (`param` names "
           "it); or the engine refused the request (its own message)",
    "401": "missing or wrong API key",
    "403": "the key may not use this model",
    "404": "no such model, or the model's engine does not serve this route",
    "408": "the request's headers or body did not arrive in time "
           "(gateway.clients.header_timeout_s, body_timeout_s)",
    "413": "the body is larger than gateway.limits.max_body_bytes",
    "422": "the engine refused the request (its own message), e.g. a field it does not know",
    "429": "over a limit of the key or of the gateway; see Retry-After",
    "500": "the engine failed on this request, on every backend tried (its own message)",
    "502": "the backend failed (connection refused or dropped, an empty answer)",
    "503": "no healthy backend for the model, the engines answered 503, or the gateway is at "
           "gateway.clients.max_connections",
    "504": "the backend sent no (next) token in time",
}
_PROXY_PATHS = {  # path → (operationId, streams)
    CHAT: ("createChatCompletion", True),
    COMPLETIONS: ("createCompletion", True),
    EMBEDDINGS: ("createEmbedding", False),
}


def _body(model_names: list[str], path: str) -> dict[str, Any]:
    schema = request_schema(path)
    schema["required"] = ["model", *schema.get("required", [])]
    schema["properties"] = {"model": {"type": "string", "enum": model_names},
                            **schema["properties"]}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any], stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": ok}}
    if stream:
        # OpenAPI 3.1: an event stream's schema describes each event (data: one JSON chunk,
        # an OpenAI-shaped error if the backend failed mid-stream, or [DONE])
        content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                           "id": {"type": "string"}}}}
    responses: dict[str, Any] = {"200": {"description": "the engine's answer", "content": content}}
    for status, why in _ERRORS.items():
        responses[status] = {"description": why,
                             "content": {"application/json": {"schema": _ERROR}}}
    return responses


def openapi_document(model_routes: Mapping[str, Iterable[str]], with_keys: bool
                     ) -> dict[str, Any]:
    """The document for models served by the proxy routes given (model name → routes): a route
    lists only the models whose engines serve it, and a route none serves is left out."""
    answer = {"type": "object"}
    models_list = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
            "type": "object", "required": ["id", "object", "routes"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                           "routes": {"type": "array", "items": {"type": "string"}}}}}},
    }
    security = [{"bearer": []}] if with_keys else []
    plain_ok = {"200": {"description": "ok", "content": {"application/json": {
        "schema": {"type": "object"}}}}}
    paths: dict[str, Any] = {}
    served = {model: set(routes) for model, routes in model_routes.items()}
    for path, (operation, stream) in _PROXY_PATHS.items():
        names = sorted(model for model, routes in served.items() if path in routes)
        if names:
            paths[path] = {"post": {"operationId": operation, "security": security,
                                    "requestBody": _body(names, path),
                                    "responses": _responses(answer, stream)}}
    paths.update({
        "/v1/models": {"get": {
            "operationId": "listModels", "security": security,
            "responses": {"200": {"description": "the models this key may use, each with the "
                                                 "proxy routes its engine serves", "content": {
                "application/json": {"schema": models_list}}},
                "401": _responses(answer, False)["401"]}}},
        "/health": {"get": {"operationId": "alive", "security": [], "responses": plain_ok}},
        "/ready": {"get": {"operationId": "ready", "security": [], "responses": {
            **plain_ok, "503": {"description": "a model has no healthy backend",
                                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    })
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "homellm gateway", "version": "1",
                 "description": "OpenAI-compatible routes in front of the stack's engines"},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    return document
