"""Static YaRN in a serve plan: the factor chosen, the scaled window, and what it changes on
every request, short ones included.

vLLM builds one rotary table from the config (``yarn_scaling_rope.py``
``YaRNScalingRotaryEmbedding``): every request, however short, gets the interpolated
frequencies and the ``mscale`` on cos/sin. The Qwen3 card: static YaRN "may impact performance
on shorter texts"; "if the average context length does not exceed 32,768 tokens, we do not
recommend enabling YaRN". So the plan asks for the smallest factor that covers the context.
"""

from __future__ import annotations

import math

from homellm.longcontext import FACTOR_STEP, ContextWindow, RopeExtension
from homellm.plan.figures import Figure, fig

_VLLM_YARN = "vllm/model_executor/layers/rotary_embedding/yarn_scaling_rope.py, common.py"


def yarn_figures(rope: RopeExtension, window: ContextWindow, context: int,
                 head_dim: int) -> dict[str, Figure]:
    """The factor and what it does: the scaled window, the attention-logit scale every token
    gets, and the share of rotary frequencies every request sees changed."""
    assert window.recipe is not None
    f: dict[str, Figure] = {}
    f["factor"] = fig("serve.yarn.factor", "YaRN factor (smallest that covers the context)", "",
                      "min(ceil(context / original / step) * step, max_factor)",
                      source=window.recipe.source,
                      note=f"rounded up to a multiple of {FACTOR_STEP:g}: factor × original is "
                           "then a whole number of tokens",
                      context=context, original=rope.original_max_position_embeddings,
                      step=FACTOR_STEP, max_factor=window.recipe.max_factor)
    f["window"] = fig("serve.yarn.window", "model window with YaRN (max_position_embeddings)",
                      "tok", "factor * original", source="--hf-overrides",
                      factor=rope.factor, original=rope.original_max_position_embeddings)
    f["logit_scale"] = fig(
        "serve.yarn.attention_logit_scale", "attention logits scaled by, on every request", "x",
        "(0.1 * math.log(factor) + 1) ** 2", source=f"{_VLLM_YARN}: cos and sin × "
        "yarn_get_mscale(factor) = 0.1·ln(factor) + 1, so q·k gets its square",
        factor=rope.factor)
    # rotary pairs below `low` keep their frequency, from `high` up they are divided by the
    # factor (yarn_find_correction_range with beta_fast 32, beta_slow 1, truncate)
    f["changed_share"] = fig(
        "serve.yarn.changed_frequencies", "rotary frequencies changed on every request", "",
        "(half - 1 - floor(d * math.log(original / (32 * 2 * math.pi)) / (2 * math.log(base))))"
        " / half", source=f"{_VLLM_YARN}: yarn_find_correction_range, yarn_linear_ramp_mask",
        note="the rest keep their trained frequency; those from ceil(d·ln(original/2π)/"
             "(2·ln base)) up are divided by the factor outright, the ones between blended",
        half=head_dim // 2, d=head_dim, original=rope.original_max_position_embeddings,
        base=rope.rope_theta)
    return f


def yarn_notes(rope: RopeExtension, window: ContextWindow, context: int) -> list[str]:
    return [
        f"context {context:,} > the model's window ({window.native:,}): --hf-overrides sets "
        f"static {rope.describe()}, the smallest factor (in steps of {FACTOR_STEP:g}) that "
        f"covers it, as the model card documents",
        "static YaRN applies to every request, short ones too (attention logits × "
        f"{(0.1 * math.log(rope.factor) + 1) ** 2:.3f}, the low rotary frequencies divided by "
        f"{rope.factor:g}); the card says it may impact performance on shorter texts: if most "
        f"requests fit {window.native:,} tokens, serve them from a model entry without it "
        "(plan again with that --context)",
    ]

