"""The gateway's public API as an OpenAPI 3.1 document (``GET /openapi.json``).

It describes what the gateway itself guarantees: the OpenAI-compatible routes with the subset of
OpenAI's request fields every engine we run understands, the model names it serves, and every
status it may answer with (each in OpenAI's error shape). Fields beyond these are passed on to
the engine untouched. Tools read it (schemathesis fuzzes the gateway against it in the tests;
client generators may use it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
    "400": "the body is not a JSON object, or lacks a model",
    "401": "missing or wrong API key",
    "403": "the key may not use this model",
    "404": "no such model",
    "413": "the body is larger than gateway.limits.max_body_bytes",
    "429": "over a limit of the key or of the gateway; see Retry-After",
    "502": "the backend failed",
    "503": "no healthy backend for the model",
    "504": "the backend sent no (next) token in time",
}


def _sampling(completion_cap: bool = True) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object",
                           "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "n": {"type": "integer", "const": 1},
        "stop": {"oneOf": [{"type": "string"},
                           {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
        "seed": {"type": "integer"},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "user": {"type": "string"},
    }
    if completion_cap:
        fields["max_tokens"] = {"type": "integer", "minimum": 1}
    return fields


def _body(model_names: list[str], required: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["model", *required],
            "properties": {"model": {"type": "string", "enum": model_names}, **fields},
        }}},
    }


def _responses(ok: dict[str, Any], stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": ok}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    responses: dict[str, Any] = {"200": {"description": "the engine's answer", "content": content}}
    for status, why in _ERRORS.items():
        responses[status] = {"description": why,
                             "content": {"application/json": {"schema": _ERROR}}}
    return responses


def openapi_document(model_names: Iterable[str], with_keys: bool) -> dict[str, Any]:
    names = sorted(model_names)
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"type": "string"},
        },
    }
    chat_fields = {"messages": {"type": "array", "items": message, "minItems": 1},
                   "max_completion_tokens": {"type": "integer", "minimum": 1}, **_sampling()}
    completion_fields = {"prompt": {"oneOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
        **_sampling()}
    embedding_fields = {
        "input": {"oneOf": [{"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
        "encoding_format": {"type": "string", "enum": ["float"]},
    }
    answer = {"type": "object"}
    models_list = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
            "type": "object", "required": ["id", "object"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}},
    }
    security = [{"bearer": []}] if with_keys else []
    plain_ok = {"200": {"description": "ok", "content": {"application/json": {
        "schema": {"type": "object"}}}}}
    paths: dict[str, Any] = {
        "/v1/chat/completions": {"post": {
            "operationId": "createChatCompletion", "security": security,
            "requestBody": _body(names, ["messages"], chat_fields),
            "responses": _responses(answer, stream=True)}},
        "/v1/completions": {"post": {
            "operationId": "createCompletion", "security": security,
            "requestBody": _body(names, ["prompt"], completion_fields),
            "responses": _responses(answer, stream=True)}},
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding", "security": security,
            "requestBody": _body(names, ["input"], embedding_fields),
            "responses": _responses(answer, stream=False)}},
        "/v1/models": {"get": {
            "operationId": "listModels", "security": security,
            "responses": {"200": {"description": "the models this key may use", "content": {
                "application/json": {"schema": models_list}}},
                "401": _responses(answer, False)["401"]}}},
        "/health": {"get": {"operationId": "alive", "security": [], "responses": plain_ok}},
        "/ready": {"get": {"operationId": "ready", "security": [], "responses": {
            **plain_ok, "503": {"description": "a model has no healthy backend",
                                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "homellm gateway", "version": "1",
                 "description": "OpenAI-compatible routes in front of the stack's engines"},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    return document
