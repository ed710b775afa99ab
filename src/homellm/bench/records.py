"""One benchmark request's record: the only thing the client hands to the metrics.

All times are ``time.perf_counter()`` seconds of the process that measured them (a worker process
converts to the parent's clock before handing records over, see ``client.py``). The metrics
(``metrics.py``) compute everything from these fields, so a unit test can build records by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any, Literal

#: where ``output_tokens`` came from: the server's ``usage``, the model's tokenizer re-counting
#: the generated text, or the number of token-carrying stream messages (a lower bound)
TokenSource = Literal["usage", "tokenizer", "chunks"]

#: why a request failed (``error_kind``); the run's summary counts failures by these
ERROR_KINDS: tuple[str, ...] = (
    "connect",        # refused, DNS, TLS: no HTTP answer at all
    "http_4xx",       # 4xx other than the two below
    "http_401",       # authentication (also 403)
    "http_429",       # rate limited
    "http_5xx",
    "timeout",        # no first message / no next message within the client's timeout
    "malformed",      # not SSE, not JSON, no choices, an error event mid-stream
    "disconnected",   # the server closed the stream before its end
    "cancelled",      # Ctrl-C or the run's duration ended while it was in flight
)


@dataclass(slots=True)
class RequestRecord:
    index: int                     # position in the workload (0-based)
    scheduled_at: float            # when the load pattern meant to send it
    sent_at: float                 # just before the HTTP request was sent (vLLM's ``st``)
    first_at: float | None = None  # first stream message carrying ``choices`` (TTFT's end)
    #: arrival time of every stream message whose ``choices`` list is non-empty, first one
    #: included, even when its text/content is empty (a role-only or special-token delta); not
    #: SSE comments, not ``[DONE]``, not the usage-only message (``choices: []``). That is vLLM's
    #: rule (vllm/benchmarks/lib/endpoint_request_func.py). ITL samples are the gaps between
    #: consecutive entries (vLLM: one sample per message, pooled over requests)
    chunk_times: list[float] = field(default_factory=list)
    done_at: float | None = None   # the response was complete (stream closed, [DONE] read)
    prompt_tokens: int | None = None       # usage.prompt_tokens, else the workload's count
    output_tokens: int | None = None       # see token_source
    token_source: TokenSource | None = None
    usage_output_tokens: int | None = None  # usage.completion_tokens as sent, for the cross-check
    generated_text: str = ""       # kept only when the run asks (tokenizer fallback, --save-text)
    status: int | None = None      # HTTP status
    error_kind: str | None = None  # one of ERROR_KINDS; None: success
    error: str | None = None       # one line saying what went wrong
    worker: int = 0                # the worker process that sent it

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.sent_at

    @property
    def e2el(self) -> float | None:
        """vLLM's latency: send → last content-carrying message (the usage-only chunk excluded)."""
        return None if not self.chunk_times else self.chunk_times[-1] - self.sent_at

    @property
    def itls(self) -> list[float]:
        times = self.chunk_times
        return [b - a for a, b in pairwise(times)]

    @property
    def send_lag(self) -> float:
        """How late the client sent it compared with the load pattern's schedule."""
        return self.sent_at - self.scheduled_at

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)
