"""What a layout keeps serving when one of its GPUs fails.

A failed GPU takes down the engine process that uses it. With one replica per GPU that is one
replica, and the gateway sends its requests to the others. A TP or PP replica spans every GPU;
its ranks meet in a collective (all-reduce, pipeline send) every layer, and a rank that is gone
stops them all: the whole service is down until the GPU is back or the stack is replanned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from homellm.hardware import GPUSpec
from homellm.modelspec import ModelSpec
from homellm.plan.figures import Figure, fig
from homellm.plan.serve_memory import MemoryPlan
from homellm.plan.serve_speed import DecodeSpeed, decode_speed

_SOURCE = ("a failed GPU stops the engine process that uses it: one replica of a replica "
           "layout, or every rank of a TP/PP replica (their per-layer collectives need all of "
           "them)")


@dataclass(frozen=True)
class Availability:
    figures: dict[str, Figure]
    after: DecodeSpeed | None      # decode of one surviving replica; None when none survives

    @property
    def replicas_left(self) -> int:
        return int(self.figures["replicas_left"].value)

    @property
    def survives(self) -> bool:
        return bool(self.figures["survives"].value)

    @property
    def requests_held(self) -> float:
        """Requests of the asked context the surviving replicas hold at once."""
        return float(self.figures["requests_held"].value)

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens/s of the surviving replicas with all the asked requests on them."""
        return float(self.figures["tokens_per_s"].value)

    def all_figures(self) -> list[Figure]:
        after = list(self.after.figures.values()) if self.after is not None else []
        return list(self.figures.values()) + after


def after_one_failure(model: ModelSpec, gpu: GPUSpec, *, replicas: int, memory: MemoryPlan,
                      concurrency: int, decode_context: int, tp: int, pp: int, dtype: str,
                      kv_cache_dtype: str, efficiency: dict[str, float] | None,
                      key: str) -> Availability:
    """The layout of ``replicas`` engine processes after one GPU fails: what is left, how many
    requests of ``memory.context`` tokens it holds, and its decode tokens/s when the asked
    ``concurrency`` lands on the survivors."""
    f: dict[str, Figure] = {}
    f["replicas_left"] = fig(f"{key}.replicas_left", "replicas left after one GPU fails", "",
                             "replicas - 1", source=_SOURCE, replicas=replicas)
    left = int(f["replicas_left"].value)
    f["survives"] = fig(f"{key}.survives", "survives one GPU failure", "",
                        "replicas_left >= 1", replicas_left=left)
    f["requests_held"] = fig(f"{key}.requests_held",
                             f"requests of {memory.context:,} tokens held after one GPU fails",
                             "", "replicas_left * per_replica",
                             source="the KV cache of the surviving replicas",
                             replicas_left=left, per_replica=memory.concurrent_at_context)
    after = None
    batch, per_request = 0, 0.0
    if left >= 1:
        batch = math.ceil(concurrency / left)
        after = decode_speed(model, gpu, batch=batch, context=decode_context, tp=tp, pp=pp,
                             dtype=dtype, efficiency=efficiency, kv_cache_dtype=kv_cache_dtype,
                             key=f"{key}.decode_c{batch}")
        per_request = float(after.figures["per_request"].value)
    f["tokens_per_s"] = fig(f"{key}.tokens_per_s",
                            f"decode tokens/s after one GPU fails ({concurrency} requests on "
                            f"{left} replica{'s' if left != 1 else ''})", "tok/s",
                            "min(concurrency, replicas_left * batch) * per_request",
                            source="the gateway sends every request to the replicas left; "
                                   "each request at the pace of a replica with `batch` of them",
                            concurrency=concurrency, replicas_left=left, batch=batch,
                            per_request=per_request)
    return Availability(figures=f, after=after)
