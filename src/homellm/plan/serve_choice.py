"""The layout ``plan serve`` recommends, and why, weighing availability as well as capacity.

``--prefer balanced`` (the default):

1. Replicas (one per GPU) when the model fits on one GPU and the replicas hold the asked
   concurrency at the asked context with every GPU up. They survive a GPU failure (the gateway
   sends everything to the replicas left, which then hold what one GPU holds), and there is no
   all-reduce per layer.
2. Otherwise the capacity choice (below): with replicas KV-starved or not fitting, TP pools
   the cards' KV cache; the reason says it is a single point of failure and what the replicas
   would have held.

``--prefer availability``: a layout that survives one GPU failure whenever one fits (the one
holding the most requests after the failure), even when it must queue some of the asked
requests; capacity only when none survives (the model needs every GPU).

``--prefer capacity``: among the layouts that hold the asked concurrency at the asked context,
the one with the most decode tokens/s at that concurrency; when none holds it, the one holding
the most requests. Survival is stated, not weighed.

PP is named as the throughput alternative when the cards have no NVLink (vLLM docs: PP when
"GPUs lack NVLink"); expert parallel is not offered over PCIe (4× PRO 6000 measured
1.4-2.6 tok/s with EP, plan-facts §7).
"""

from __future__ import annotations

from typing import Literal, get_args

from homellm.errors import ConfigError
from homellm.modelspec import ModelSpec
from homellm.plan.serve_layouts import Layout

Prefer = Literal["balanced", "availability", "capacity"]
PREFER: tuple[str, ...] = get_args(Prefer)


def check_prefer(prefer: str) -> Prefer:
    if prefer not in PREFER:
        raise ConfigError(f"--prefer: expected one of {', '.join(PREFER)}, got {prefer!r}")
    return prefer  # type: ignore[return-value]


def kv_starved(layout: Layout, concurrency: int) -> bool:
    """The replicas cannot hold their share of the requests at the asked context."""
    per_replica = max(1, -(-concurrency // layout.replicas))
    return layout.memory.concurrent_at_context < per_replica


def recommend(layouts: dict[str, Layout], model: ModelSpec, concurrency: int, nvlink: bool,
              prefer: str = "balanced") -> tuple[str | None, str]:
    """``(key of the layout to use or None, the reason)`` by the rule in the module docstring."""
    prefer = check_prefer(prefer)
    ep = (" Expert parallel is not offered: over PCIe it measured 1.4-2.6 tok/s "
          "(plan-facts §7).") if model.is_moe and not nvlink else ""
    fitting = {key: layout for key, layout in layouts.items() if layout.fits}
    if not fitting:
        return None, "No layout fits these GPUs: " + "; ".join(
            f"{layout.label}: {layout.memory.error.rstrip('.')}"
            for layout in layouts.values()) + "." + ep
    reps = fitting.get("replicas")
    if reps is not None and reps.replicas == 1:
        return "replicas", (f"It fits on one GPU with room for {_held(reps)}; with one GPU, its "
                            "failure stops the service." + ep)
    survivors = {k: v for k, v in fitting.items() if v.availability.survives}
    safest = max(survivors, key=lambda k: survivors[k].availability.requests_held,
                 default=None)
    if prefer == "balanced" and reps is not None and not kv_starved(reps, concurrency):
        return "replicas", _replicas_reason(reps, fitting, concurrency) + ep
    if prefer == "availability" and safest is not None:
        return safest, ("--prefer availability: "
                        + _replicas_reason(survivors[safest], fitting, concurrency) + ep)
    key = _most_capacity(fitting, concurrency)
    chosen = fitting[key]
    if prefer == "capacity":
        why = (f"--prefer capacity: {chosen.label} holds {_held(chosen)} at once and decodes "
               f"{chosen.total_tokens_per_s:,.0f} tok/s at {concurrency} concurrent, the most "
               "of the layouts that fit.")
    elif chosen.availability.survives:
        why = _replicas_reason(chosen, fitting, concurrency)
    elif reps is not None:
        why = (f"One GPU holds only {reps.memory.concurrent_at_context:.1f} requests of "
               f"{reps.context:,} tokens (KV-starved for {concurrency} concurrent): "
               f"{reps.label} would survive a GPU failure but hold {_held(reps)} at once "
               f"({reps.availability.requests_held:.1f} after a failure). {chosen.label} pools "
               f"the cards' KV cache ({chosen.memory.kv_tokens:,} tokens, "
               f"{chosen.requests_at_context:.1f} requests) and decodes "
               f"{chosen.total_tokens_per_s:,.0f} tok/s at {concurrency} concurrent.")
    else:
        error = layouts["replicas"].memory.error.split(". ")[0] if "replicas" in layouts else ""
        why = (f"It does not fit on one GPU ({error}); " if error
               else "It needs more than one GPU; ")
        why += (f"{chosen.label} splits weights and KV heads over the cards. No layout survives "
                "a GPU failure: each needs every GPU.")
    if not chosen.availability.survives and safest is not None:
        why += (f" But {chosen.label} is a single point of failure: one GPU failing stops the "
                f"service until it is back; --prefer availability recommends "
                f"{survivors[safest].label}.")
    pp, tp = fitting.get("pp"), fitting.get("tp")
    if key == "tp" and pp is not None and tp is not None and not nvlink:
        why += (f" PP={pp.pp} is the alternative without NVLink (no all-reduce per layer): "
                f"{pp.total_tokens_per_s:,.0f} vs {tp.total_tokens_per_s:,.0f} tok/s for TP at "
                f"{concurrency} concurrent.")
    return key, why + ep


def _requests(concurrency: int) -> str:
    return "the 1 request" if concurrency == 1 else f"all {concurrency} requests"


def _held(layout: Layout) -> str:
    return f"{layout.requests_at_context:.1f} requests of {layout.context:,} tokens"


def _most_capacity(fitting: dict[str, Layout], concurrency: int) -> str:
    """The layout holding the asked concurrency with the most tok/s, else the most requests."""
    holding = [k for k, v in fitting.items() if v.requests_at_context >= concurrency]
    if holding:
        return max(holding, key=lambda k: fitting[k].total_tokens_per_s)
    return max(fitting, key=lambda k: fitting[k].requests_at_context)


def _replicas_reason(reps: Layout, fitting: dict[str, Layout], concurrency: int) -> str:
    starved = kv_starved(reps, concurrency)
    after = reps.availability
    why = (f"{reps.label}: the model fits on one GPU and the replicas hold {_held(reps)} at "
           f"once (asked: {concurrency})")
    why += ("; the rest queue" if starved else
            ", each GPU serving on its own with no all-reduce per layer")
    why += (f". One GPU failing leaves {after.replicas_left} replica"
            f"{'s' if after.replicas_left != 1 else ''} serving: "
            f"{after.requests_held:.1f} requests held, {after.tokens_per_s:,.0f} tok/s with "
            f"{_requests(concurrency)} on {'them' if after.replicas_left != 1 else 'it'}"
            + ("" if after.requests_held >= concurrency else
               "; requests beyond what it holds queue until the GPU is back") + ".")
    spof = [v for v in fitting.values() if not v.availability.survives]
    if spof:
        best = max(spof, key=lambda v: v.requests_at_context)
        why += (f" {best.label} would hold {best.requests_at_context:.1f} requests and decode "
                f"{best.total_tokens_per_s:,.0f} tok/s at {concurrency} concurrent (replicas: "
                f"{reps.total_tokens_per_s:,.0f}), but it is a single point of failure: one GPU "
                "failing stops the service.")
    return why
