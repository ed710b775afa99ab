"""The streaming client over real loopback HTTP: the FAKE backend (homellm.gateway.fakebackend,
not an engine) for the normal and failing paths, and tiny hand-written aiohttp servers for what
the fake cannot do (401, 429, malformed SSE, error events, no usage, odd framing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from homellm.bench.client import (
    EndpointError,
    SSEParser,
    Target,
    Timeouts,
    finalize_tokens,
    make_session,
    normalize_base_url,
    probe_endpoint,
    send_request,
)
from homellm.bench.records import ERROR_KINDS, RequestRecord
from homellm.gateway.fakebackend import FakeBackend
from tests.bench.test_workload import make_tokenizer
from tests.conftest import free_port

FAST = Timeouts(connect_s=2, first_s=5, between_s=5)


def one(base_url: str, *, endpoint: str = "chat", timeouts: Timeouts = FAST,
        **target: Any) -> RequestRecord:
    async def go() -> RequestRecord:
        t = Target(base_url, "tiny", endpoint, **target)  # type: ignore[arg-type]
        rec = RequestRecord(0, 0.0, 0.0)
        async with make_session(1, timeouts) as session:
            await send_request(session, t, t.body("привет", 8), rec, timeouts)
        return rec
    return asyncio.run(asyncio.wait_for(go(), 15))


def with_fake(test: Callable[[FakeBackend], Awaitable[Any]], **knobs: Any) -> Any:
    async def go() -> Any:
        fake = FakeBackend(name="tiny", **knobs)
        await fake.start()
        try:
            return await asyncio.wait_for(test(fake), 15)
        finally:
            await fake.stop()
    return asyncio.run(go())


async def send(fake: FakeBackend, timeouts: Timeouts = FAST, endpoint: str = "chat",
               **target: Any) -> RequestRecord:
    t = Target(fake.base_url, "tiny", endpoint, **target)  # type: ignore[arg-type]
    rec = RequestRecord(0, 0.0, 0.0)
    async with make_session(1, timeouts) as session:
        await send_request(session, t, t.body("привет", 8), rec, timeouts)
    return rec


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_success_times_and_usage(endpoint: str) -> None:
    rec = with_fake(lambda f: send(f, endpoint=endpoint), tokens=5, delay_ms=5)
    assert rec.ok and rec.status == 200 and rec.error is None
    assert rec.sent_at < rec.first_at <= rec.chunk_times[-1] <= rec.done_at  # type: ignore[operator]
    # 5 token messages plus the fake's last message (choices with an empty delta + usage):
    # vLLM counts every message whose choices is non-empty, empty text included
    assert len(rec.chunk_times) == 6 and rec.first_at == rec.chunk_times[0]
    assert all(g >= 0 for g in rec.itls) and max(rec.itls) >= 0.004
    assert rec.usage_output_tokens == 5 and rec.prompt_tokens == 3
    assert rec.generated_text == "t0 t1 t2 t3 t4 "
    finalize_tokens(rec, None)
    assert (rec.output_tokens, rec.token_source, rec.generated_text) == (5, "usage", "")


def test_body_follows_vllm() -> None:
    async def go(fake: FakeBackend) -> tuple[dict[str, Any], dict[str, Any]]:
        await send(fake, ignore_eos=True, extra_body={"temperature": 0, "top_k": 1})
        chat = dict(fake.last_request or {})
        await send(fake, endpoint="completions")
        return chat, dict(fake.last_request or {})

    chat, comp = with_fake(go)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["messages"] == [{"role": "user", "content": "привет"}]
    assert chat["max_completion_tokens"] == 8 and chat["ignore_eos"] is True
    assert chat["temperature"] == 0 and chat["top_k"] == 1 and chat["model"] == "tiny"
    assert comp["prompt"] == "привет" and comp["max_tokens"] == 8 and "ignore_eos" not in comp


def test_stream_without_done_is_fine() -> None:
    rec = with_fake(send, tokens=3, send_done=False)
    assert rec.ok and rec.usage_output_tokens == 3


@pytest.mark.parametrize(("knobs", "timeouts", "kind", "words"), [
    ({"die_after": 2}, FAST, "disconnected", "payload"),
    ({"stall_after": 2}, Timeouts(first_s=5, between_s=0.3), "timeout", "after 2 token"),
    ({"hang_s": 3}, Timeouts(first_s=0.3, between_s=5), "timeout", "no first message"),
    ({"fail_status": 503}, FAST, "http_5xx", "HTTP 503"),
    ({"fail_status": 400}, FAST, "http_4xx", "HTTP 400"),
])
def test_fake_backend_failures(knobs: dict[str, Any], timeouts: Timeouts, kind: str,
                               words: str) -> None:
    rec = with_fake(lambda f: send(f, timeouts), tokens=6, **knobs)
    assert rec.error_kind == kind and kind in ERROR_KINDS
    assert words in (rec.error or "") and "\n" not in (rec.error or "")
    assert rec.done_at is not None


def test_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    rec = one(url)
    assert rec.error_kind == "connect" and "cannot connect" in (rec.error or "")
    with pytest.raises(EndpointError, match="cannot reach"):
        asyncio.run(probe_endpoint(url, None, 2))


# --- hand-written servers -------------------------------------------------------------------


def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
          test: Callable[[str], Any]) -> Any:
    """Run ``handler`` for every path on a loopback aiohttp server while ``test(url)`` runs in
    a thread (it uses its own event loop, as the client does)."""
    async def go() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await asyncio.wait_for(asyncio.to_thread(test, f"http://127.0.0.1:{port}"), 15)
        finally:
            await runner.cleanup()
    return asyncio.run(go())


def stream_of(*pieces: bytes, delay: float = 0.0) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp
    return handler


def status(code: int, body: dict[str, Any]) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(body, status=code)
    return handler


def msg(content: str | None = None, usage: int | None = None, choices: bool = True) -> bytes:
    obj: dict[str, Any] = {"choices": [{"index": 0, "delta": {"content": content}}]
                           if choices else []}
    if usage is not None:
        obj["usage"] = {"prompt_tokens": 11, "completion_tokens": usage}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize(("code", "kind"), [(401, "http_401"), (403, "http_401"),
                                            (429, "http_429"), (404, "http_4xx"),
                                            (500, "http_5xx")])
def test_error_statuses(code: int, kind: str) -> None:
    body = {"error": {"message": f"told to answer {code}", "type": "x"}}
    rec = serve(status(code, body), one)
    assert rec.error_kind == kind and rec.status == code
    assert rec.error == f"HTTP {code}: told to answer {code}"


def test_probe_refuses_a_bad_key() -> None:
    with pytest.raises(EndpointError, match="api-key"):
        serve(status(401, {"error": "no"}), lambda url: asyncio.run(probe_endpoint(url, "k")))


@pytest.mark.parametrize(("pieces", "kind", "words"), [
    ((b"data: {not json\n\n",), "malformed", "JSONDecodeError"),
    ((b"data: [1, 2]\n\n",), "malformed", "not an object"),
    ((b'{"choices": []}',), "malformed", "without a message carrying choices"),
    ((msg("a"), b'data: {"error": {"message": "engine died", "code": "upstream_disconnected"}}'
      b"\n\n"), "disconnected", "engine died"),
    ((msg("a"), b'data: {"error": {"message": "boom"}}\n\n'), "malformed", "boom"),
])
def test_malformed_streams(pieces: tuple[bytes, ...], kind: str, words: str) -> None:
    rec = serve(stream_of(*pieces), one)
    assert rec.error_kind == kind and words in (rec.error or "")


def test_framing_comments_crlf_split_reads_and_no_usage(tmp_path: Path) -> None:
    stream = (b": ping\r\n\r\n" + msg("При").replace(b"\n", b"\r\n")
              + msg("вет")[:7], msg("вет")[7:] + msg(""), msg(None), b"data: [DONE]\n\n")
    rec = serve(stream_of(*stream, delay=0.02), one)
    assert rec.ok and rec.generated_text == "Привет"
    assert len(rec.chunk_times) == 4  # empty and null content still count, as in vLLM
    assert rec.usage_output_tokens is None and rec.prompt_tokens is None
    tok = make_tokenizer(tmp_path)
    finalize_tokens(rec, tok.count, keep_text=True)
    assert rec.token_source == "tokenizer" and rec.output_tokens == tok.count("Привет")
    finalize_tokens(rec, None)
    assert (rec.token_source, rec.output_tokens) == ("chunks", 4)


def test_usage_only_message_is_not_a_token_message() -> None:
    rec = serve(stream_of(msg("a"), msg("b"), msg(usage=2, choices=False), b"data: [DONE]\n\n",
                          delay=0.02), one)
    assert rec.ok and len(rec.chunk_times) == 2 and rec.usage_output_tokens == 2
    assert rec.prompt_tokens == 11
    assert rec.done_at > rec.chunk_times[-1]  # type: ignore[operator]


def test_sse_parser_joins_data_lines_and_flushes_at_the_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\ndata: b\nid: 1\n\n: c\n\nda") == ["a\nb"]
    assert p.feed(b"ta: x") == []
    assert p.feed("ж".encode()[:1]) == []  # half a UTF-8 character waits for the rest
    assert p.feed("ж".encode()[1:] + b"\n\n") == ["xж"]
    assert p.feed(b"data: [DONE]", final=True) == ["[DONE]"]


def test_base_url_forms() -> None:
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    assert normalize_base_url(" https://h ") == "https://h"
