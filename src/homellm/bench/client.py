"""The streaming HTTP client: one request → one ``RequestRecord``, with vLLM's timing rules.

Checked against vLLM's ``vllm/benchmarks/lib/endpoint_request_func.py`` (main, 2026):
``st = perf_counter()`` just before ``session.post``; the stream is split into SSE messages at
blank lines; ``:`` comments are skipped; every message whose ``choices`` is non-empty is one
token-carrying message (empty text counts), the first one ends TTFT and each later one gives one
ITL sample; the latency ends at the last such message (the trailing usage-only message and
``[DONE]`` do not count); ``stream_options.include_usage`` is sent and ``usage.completion_tokens``
is the output length; ``ignore_eos`` and the extra body are merged into the JSON body.

Two deliberate differences: the arrival time is taken once per network read (vLLM calls
``perf_counter`` per message, microseconds apart, after some parsing), and ``usage`` is read from
any message, also one that carries choices (vLLM reads it only from messages without choices, so
a server that puts usage in its last token message gets re-counted by tokenizer there).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from homellm.bench.records import RequestRecord
from homellm.errors import ConfigError, HomellmError

Endpoint = Literal["chat", "completions"]
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: aiohttp's 64 KiB default stalls long-context streams (vllm#39963; vLLM PR #40050 uses 4 MiB)
READ_BUFSIZE = 4 * 1024 * 1024


class EndpointError(HomellmError):
    """The endpoint cannot be used at all (unreachable, refuses our key, no model)."""


@dataclass(frozen=True)
class Target:
    """Where and what to send; ``base_url`` without the ``/v1`` suffix."""

    base_url: str
    model: str
    endpoint: Endpoint = "chat"
    api_key: str | None = None
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url + _PATHS[self.endpoint]

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def body(self, prompt: str, max_tokens: int) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "stream": True,
                                   "stream_options": {"include_usage": True}}
        if self.endpoint == "chat":
            payload["messages"] = [{"role": "user", "content": prompt}]
            payload["max_completion_tokens"] = max_tokens
        else:
            payload["prompt"] = prompt
            payload["max_tokens"] = max_tokens
        if self.ignore_eos:
            payload["ignore_eos"] = True
        payload.update(self.extra_body)
        return json.dumps(payload, ensure_ascii=False).encode()


def normalize_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r}: give http://HOST:PORT")
    return url.removesuffix("/v1")


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    first_s: float = 600.0     # send → first message carrying choices (prefill under load)
    between_s: float = 60.0    # one token message → the next


def make_session(limit: int, timeouts: Timeouts) -> aiohttp.ClientSession:
    """One per worker: connector ``limit`` = the concurrency (0 = no limit, for open loop)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60,
                                     ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout,
                                 read_bufsize=READ_BUFSIZE, trust_env=True)


class SSEParser:
    """Bytes in, complete ``data`` payloads out (multi-line data joined, comments dropped)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        self._buf += self._decoder.decode(data, final).replace("\r\n", "\n")
        *events, self._buf = self._buf.split("\n\n")
        if final and self._buf.strip():
            events.append(self._buf)
            self._buf = ""
        out = []
        for event in events:
            lines = [ln[5:].removeprefix(" ") for ln in event.split("\n") if ln.startswith("data:")]
            if lines:
                out.append("\n".join(lines))
        return out


class _Failed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _status_kind(status: int) -> str:
    if status in (401, 403):
        return "http_401"
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_message(body: bytes) -> str:
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        if err is not None:
            return str(err)
    except (ValueError, AttributeError):
        pass
    return body.decode("utf-8", "replace")


async def send_request(session: aiohttp.ClientSession, target: Target, body: bytes,
                       record: RequestRecord, timeouts: Timeouts) -> None:
    """Send one request and fill ``record`` (times, usage, text, status, error). Never raises
    for the request's own failure; on cancellation it records ``cancelled`` and re-raises."""
    loop = asyncio.get_running_loop()
    text_parts: list[str] = []
    chat = target.endpoint == "chat"
    record.sent_at = time.perf_counter()
    try:
        async with asyncio.timeout(timeouts.first_s) as deadline:
            async with session.post(target.url, data=body, headers=target.headers()) as resp:
                record.status = resp.status
                if resp.status != 200:
                    raw = await resp.content.read(4096)
                    raise _Failed(_status_kind(resp.status),
                                  f"HTTP {resp.status}: {_one_line(_error_message(raw))}")
                parser = SSEParser()
                done = False
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    got = _consume(parser.feed(data), now, record, text_parts, chat)
                    if got:
                        deadline.reschedule(loop.time() + timeouts.between_s)
                    done = done or got is None
                if _consume(parser.feed(b"", final=True), time.perf_counter(), record,
                            text_parts, chat) is None:
                    done = True
        record.done_at = time.perf_counter()
        if record.first_at is None:
            raise _Failed("malformed", "the stream ended without a message carrying choices"
                          + ("" if done else " (and without [DONE])"))
    except _Failed as exc:
        record.error_kind, record.error = exc.kind, str(exc)
    except aiohttp.ConnectionTimeoutError as exc:
        record.error_kind, record.error = "connect", _one_line(f"connect timeout: {exc}")
    except TimeoutError:
        record.error_kind = "timeout"
        record.error = (f"no first message within {timeouts.first_s:g}s" if record.first_at is None
                        else f"no message for {timeouts.between_s:g}s "
                        f"after {len(record.chunk_times)} token messages")
    except asyncio.CancelledError:
        record.error_kind, record.error = "cancelled", "cancelled while in flight"
        raise
    except aiohttp.ClientConnectorError as exc:
        record.error_kind, record.error = "connect", _one_line(f"cannot connect: {exc}")
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError) as exc:
        record.error_kind = "disconnected"
        record.error = _one_line(f"{type(exc).__name__}: {exc}")
    except (ValueError, aiohttp.ClientError) as exc:  # JSON, UTF-8, bad HTTP
        record.error_kind = "malformed"
        record.error = _one_line(f"{type(exc).__name__}: {exc}")
    finally:
        record.generated_text = "".join(text_parts)
        if record.error_kind is not None and record.done_at is None:
            record.done_at = time.perf_counter()


def _consume(events: list[str], now: float, record: RequestRecord, text_parts: list[str],
             chat: bool) -> bool | None:
    """Apply parsed events; True if one carried choices, None once [DONE] was read."""
    got: bool | None = False
    for payload in events:
        if payload == "[DONE]":
            return None
        msg = json.loads(payload)
        if not isinstance(msg, dict):
            raise _Failed("malformed", f"stream message is not an object: {_one_line(payload)}")
        if "error" in msg and not msg.get("choices"):
            err = msg["error"]
            code = err.get("code") if isinstance(err, dict) else None
            kind = {"upstream_disconnected": "disconnected",
                    "upstream_timeout": "timeout"}.get(str(code), "malformed")
            text = err.get("message", err) if isinstance(err, dict) else err
            raise _Failed(kind, _one_line(f"error event in the stream: {text}"))
        choices = msg.get("choices")
        if choices:
            if record.first_at is None:
                record.first_at = now
            record.chunk_times.append(now)
            first = choices[0] if isinstance(choices[0], dict) else {}
            piece = (first.get("delta") or {}).get("content") if chat else first.get("text")
            if piece:
                text_parts.append(piece)
            got = True
        usage = msg.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("completion_tokens"), int):
                record.usage_output_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                record.prompt_tokens = usage["prompt_tokens"]
    return got


def finalize_tokens(record: RequestRecord, count: Callable[[str], int] | None,
                    keep_text: bool = False) -> None:
    """Output length: the server's usage, else the model's tokenizer on the text, else the
    number of token messages (a lower bound when a message carries several tokens)."""
    if record.usage_output_tokens is not None:
        record.output_tokens, record.token_source = record.usage_output_tokens, "usage"
    elif count is not None and record.first_at is not None:
        record.output_tokens, record.token_source = count(record.generated_text), "tokenizer"
    elif record.first_at is not None:
        record.output_tokens, record.token_source = len(record.chunk_times), "chunks"
    if not keep_text:
        record.generated_text = ""


# --- before the run -------------------------------------------------------------------------


@dataclass
class ServerFacts:
    """What the endpoint says about itself, for the bench card."""

    base_url: str
    models: list[str] = field(default_factory=list)
    version: dict[str, Any] | None = None   # GET /version when it answers (vLLM, SGLang)
    server_header: str | None = None


async def probe_endpoint(base_url: str, api_key: str | None,
                         timeout_s: float = 10.0) -> ServerFacts:
    """Ask /v1/models and /version; a refused connection or a rejected key is a one-line error
    before any load is sent."""
    facts = ServerFacts(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
        try:
            async with session.get(base_url + "/v1/models", headers=headers) as resp:
                facts.server_header = resp.headers.get("Server")
                if resp.status in (401, 403):
                    raise EndpointError(f"{base_url}: HTTP {resp.status} from /v1/models — "
                                        "check --api-key")
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    facts.models = [str(m.get("id")) for m in data.get("data", [])
                                    if isinstance(m, dict)]
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise EndpointError(f"cannot reach {base_url}: {_one_line(str(exc))}") from None
        except TimeoutError:
            raise EndpointError(f"{base_url}: no answer from /v1/models within "
                                f"{timeout_s:g}s") from None
        except (ValueError, aiohttp.ClientError, AttributeError):
            pass  # a server without a usable /v1/models can still serve completions
        try:
            async with session.get(base_url + "/version", headers=headers) as resp:
                if resp.status == 200:
                    version = await resp.json(content_type=None)
                    facts.version = version if isinstance(version, dict) else {"version": version}
        except (ValueError, TimeoutError, aiohttp.ClientError):
            pass
    return facts
