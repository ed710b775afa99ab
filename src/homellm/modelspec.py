"""Model architecture facts from a Hugging Face ``config.json`` (or the built-in catalog):
parameter counts, KV-cache bytes per token, what a token reads and computes. Never loads weights.

Parameter counts are exact for the supported families (the tests build each config with
``transformers`` on the meta device and compare ``sum(p.numel())``). Per decoder layer:

- attention: ``h·(nq·d) + 2·h·(nkv·d) + (nq·d)·h`` plus biases (Qwen2: q, k, v; Llama/Qwen3/
  Gemma with ``attention_bias``: q, k, v, o) plus q/k RMSNorms of width ``d`` (Qwen3, Gemma3);
- MLP (SwiGLU, gate/up/down): dense ``3·h·ffn`` (+ ``2·ffn + h`` with Llama's ``mlp_bias``);
  MoE ``E·h`` router + ``E·3·h·ffn_moe`` experts (+ a shared expert ``3·h·ffn_shared + h``);
- norms: 2 RMSNorms of width ``h`` (4 in Gemma2/Gemma3);

plus the final norm ``h``, the input embedding ``V·h`` and the LM head ``V·h`` (0 when tied).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homellm.errors import ConfigError


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int          # per token: MoE counts only experts_per_token experts (+ shared)
    embedding: int       # the input embedding matrix
    lm_head: int         # the output projection; 0 when tied to the input embedding
    routed_experts: int = 0  # all routed-expert weights of all MoE layers (inside total)

    @property
    def non_embedding(self) -> int:
        """As model cards count it: without the input embedding and the LM head."""
        return self.total - self.embedding - self.lm_head


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str                  # where the facts came from: a config path, or the catalog's source
    model_type: str              # config.json's model_type: qwen3, qwen3_moe, llama, mistral, ...
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int       # the dense MLP's width (for layers that are dense)
    vocab_size: int
    tie_embeddings: bool
    max_position_embeddings: int
    params: ParamCounts
    num_experts: int = 0         # 0: dense
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_layers: int = 0          # layers whose MLP is MoE
    sliding_window: int | None = None
    sliding_window_layers: int = 0   # layers that attend only to the last `sliding_window` tokens
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's always-on shared expert; 0: none

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def kv_bytes_per_token(self, dtype_bytes: float = 2.0) -> float:
        """K and V of every layer: 2 · layers · kv_heads · head_dim · bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    # --- weights -------------------------------------------------------------------------------

    def weight_bytes(self, dtype_bytes: float = 2.0) -> float:
        """All weights: ``params.total · bytes`` (tied embeddings stored once)."""
        return self.params.total * dtype_bytes

    @property
    def params_per_expert(self) -> int:
        """One routed expert of one layer: ``3 · hidden · moe_intermediate`` (gate, up, down)."""
        if not self.moe_layers or not self.num_experts:
            return 0
        return self.params.routed_experts // (self.moe_layers * self.num_experts)

    @property
    def lm_head_matmul_params(self) -> int:
        """Weights the LM head multiplies by, tied or not: ``vocab · hidden``."""
        return self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        """RMSNorm weights (inside ``params.total``): 2 per layer of width ``h`` (4 in
        Gemma2/3), q/k norms of width ``d`` (Qwen3, Gemma3), and the final norm."""
        per_layer = (4 if self.model_type in _FOUR_NORMS else 2) * self.hidden_size
        per_layer += 2 * self.head_dim * (self.model_type in _QK_NORM)
        return self.num_layers * per_layer + self.hidden_size

    def matmul_params(self, distinct_experts: float | None = None) -> float:
        """Weights one token passes through: everything but the input-embedding lookup, the LM
        head counted even when tied, and for MoE ``distinct_experts`` experts per MoE layer
        (default ``experts_per_token``, which makes this ``active − embedding + tied head``)::

            N = total − embedding − routed_experts + [tied]·V·h
                + moe_layers · distinct_experts · params_per_expert
        """
        p = self.params
        n = p.total - p.embedding - p.routed_experts
        if self.tie_embeddings:
            n += self.lm_head_matmul_params
        if self.is_moe:
            k = self.experts_per_token if distinct_experts is None else distinct_experts
            k = min(max(float(k), 0.0), float(self.num_experts))
            return n + self.moe_layers * k * self.params_per_expert
        return float(n)

    def decode_read_bytes(self, dtype_bytes: float = 2.0,
                          distinct_experts: float | None = None) -> float:
        """Weight bytes one decode step reads (KV cache not included)::

            bytes = dtype_bytes · matmul_params(distinct_experts)

        i.e. everything except the input-embedding lookup (the LM head is read, tied or not);
        for MoE the non-expert part plus ``distinct_experts`` experts per MoE layer, by default
        ``experts_per_token`` (batch 1); pass :meth:`expected_distinct_experts` for a batch.
        """
        return dtype_bytes * self.matmul_params(distinct_experts)

    def expected_distinct_experts(self, batch: int) -> float:
        """Experts per MoE layer a decode step touches for ``batch`` tokens routed uniformly at
        random: ``E · (1 − (1 − k/E)^B)`` (k at B = 1, → E as B grows); 0 for dense models."""
        if not self.is_moe:
            return 0.0
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** max(int(batch), 0))

    # --- FLOPs ----------------------------------------------------------------------------------

    def attended_positions(self, context: int) -> int:
        """Σ over layers of the positions a token attends to: full-attention layers see
        ``context``, sliding-window layers ``min(context, sliding_window)``."""
        full = self.num_layers - self.sliding_window_layers
        window = min(context, self.sliding_window) if self.sliding_window else context
        return full * context + self.sliding_window_layers * window

    def forward_flops_per_token(self, context: int) -> float:
        """Forward FLOPs of one token that attends to ``context`` positions::

            2 · N + 4 · (nq · d) · Σ_layers ctx_layer

        ``N`` = :meth:`matmul_params` (active weights, LM head in, embedding lookup out);
        ``4 · nq·d · ctx`` per layer is QKᵀ and A·V (2 FLOPs per multiply-add each); for a
        full-attention model Σ ctx_layer = L · context. Decode at position p: context = p;
        a causal prefill of T tokens averages context ≈ T/2.
        """
        q_width = self.num_heads * self.head_dim
        return 2.0 * self.matmul_params() + 4.0 * q_width * self.attended_positions(context)

    def train_flops_per_token(self, seq_len: int) -> float:
        """Training (forward + backward) FLOPs per token, the PaLM (App. B) / nanoGPT
        ``estimate_mfu`` formula::

            6 · N + 12 · L · H · Q · T        (H·Q = num_heads · head_dim, T = seq_len)

        ``N`` = :meth:`matmul_params`: every weight a token multiplies by, the LM head
        included even when tied, the input-embedding lookup excluded (nanoGPT subtracts only
        the position embedding and keeps the tied token embedding "because it is used as the
        weights of the final layer"); for MoE only the routed ``k`` experts count. The attention
        term is non-causal (full T, as PaLM and nanoGPT count it for MFU), and sliding-window
        layers use ``min(T, window)``. This is 3 · :meth:`forward_flops_per_token` at T.
        """
        return 3.0 * self.forward_flops_per_token(seq_len)


# --- parsing config.json -----------------------------------------------------------------------

DENSE_TYPES = ("qwen3", "qwen2", "llama", "mistral", "gemma", "gemma2", "gemma3_text")
MOE_TYPES = ("qwen3_moe", "qwen2_moe", "mixtral")
SUPPORTED_TYPES = DENSE_TYPES + MOE_TYPES
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3_text"}
_FOUR_NORMS = {"gemma2", "gemma3_text"}
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text"}
# families whose transformers code derives head_dim = hidden / heads when the config has none;
# the others (qwen3: 128, gemma: 256) use a constant we refuse to assume silently
_HEAD_DIM_DERIVED = {"qwen2", "qwen2_moe", "qwen3_moe", "llama", "mistral", "mixtral"}


class _Cfg:
    """Typed access to config.json fields with one-line errors naming the file and field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def fail(self, field: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: field '{field}' {problem}")

    def int(self, field: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.data.get(field)
        if value is None:
            if default is None:
                raise self.fail(field, "is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(field, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def bool(self, field: str, default: bool) -> bool:
        value = self.data.get(field)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(field, f"must be true or false, got {value!r}")
        return value


def _load(config: Mapping[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    if isinstance(config, Mapping):
        return dict(config), str(config.get("_name_or_path") or "<config dict>")
    path = Path(config).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (expected a config.json or a model folder)") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data, str(path)


def model_spec_from_config(config: Mapping[str, Any] | str | Path, name: str | None = None,
                           source: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from a Hugging Face ``config.json``: a dict, a file, or a model
    folder. ``name`` defaults to the folder's name (or ``_name_or_path``, or ``model_type``).
    Unknown ``model_type`` or a missing field raises :class:`ConfigError` naming both."""
    data, where = _load(config)
    c = _Cfg(data, where)
    mt = data.get("model_type")
    if mt not in SUPPORTED_TYPES:
        hint = " (a multimodal config: not supported)" if "text_config" in data else ""
        raise c.fail("model_type", f"is {mt!r}{hint}; supported: {', '.join(SUPPORTED_TYPES)}")
    h = c.int("hidden_size")
    n_layers = c.int("num_hidden_layers")
    nq = c.int("num_attention_heads")
    nkv = c.int("num_key_value_heads", default=nq)
    vocab = c.int("vocab_size")
    max_pos = c.int("max_position_embeddings")
    if data.get("head_dim") is not None or mt not in _HEAD_DIM_DERIVED:
        d = c.int("head_dim")
    else:
        d = h // nq
    tied = c.bool("tie_word_embeddings", mt in _TIED_BY_DEFAULT)

    # MoE layout
    n_exp = top_k = ffn_moe = ffn_shared = 0
    moe_idx: set[int] = set()
    if mt in ("qwen3_moe", "qwen2_moe"):
        n_exp = c.int("num_experts", minimum=0)
        step = c.int("decoder_sparse_step", default=1)
        only_dense = data.get("mlp_only_layers") or []
        if not isinstance(only_dense, list) or not all(isinstance(i, int) for i in only_dense):
            raise c.fail("mlp_only_layers", f"must be a list of layer indices, got {only_dense!r}")
        if n_exp:
            moe_idx = {i for i in range(n_layers)
                       if i not in only_dense and (i + 1) % step == 0}
    elif mt == "mixtral":
        n_exp = c.int("num_local_experts")
        moe_idx = set(range(n_layers))
    if moe_idx:
        top_k = c.int("num_experts_per_tok")
        if top_k > n_exp:
            raise c.fail("num_experts_per_tok", f"is {top_k}, more than the {n_exp} experts")
        ffn_moe = c.int("intermediate_size" if mt == "mixtral" else "moe_intermediate_size")
        if mt == "qwen2_moe":
            ffn_shared = c.int("shared_expert_intermediate_size", minimum=0)
    dense_layers = n_layers - len(moe_idx)
    ffn = c.int("intermediate_size", default=0 if not dense_layers else None,
                minimum=0 if not dense_layers else 1)

    # per-layer parameters
    if mt == "qwen2":
        qkv_bias, o_bias = True, False
    elif mt == "qwen2_moe":
        qkv_bias, o_bias = c.bool("qkv_bias", True), False
    elif mt in ("mistral", "mixtral"):
        qkv_bias = o_bias = False
    else:
        qkv_bias = o_bias = c.bool("attention_bias", False)
    attn = 2 * h * nq * d + 2 * h * nkv * d
    attn += (nq * d + 2 * nkv * d) * qkv_bias + h * o_bias
    attn += 2 * d * (mt in _QK_NORM)
    norms = (4 if mt in _FOUR_NORMS else 2) * h
    dense_mlp = 3 * h * ffn + (2 * ffn + h) * (mt == "llama" and c.bool("mlp_bias", False))
    per_expert = 3 * h * ffn_moe
    shared = 3 * h * ffn_shared + h if mt == "qwen2_moe" else 0
    moe_fixed = n_exp * h + shared          # router (+ shared expert and its gate)

    embedding = vocab * h
    lm_head = 0 if tied else vocab * h
    routed = len(moe_idx) * n_exp * per_expert
    total = (n_layers * (attn + norms) + dense_layers * dense_mlp
             + len(moe_idx) * moe_fixed + routed + h + embedding + lm_head)
    active = total - routed + len(moe_idx) * top_k * per_expert

    window = data.get("sliding_window")
    window = window if isinstance(window, int) and not isinstance(window, bool) else None
    if mt in ("llama", "gemma") or (mt.startswith("qwen")
                                     and not c.bool("use_sliding_window", False)):
        window = None                                      # these never slide
    sliding = _sliding_layers(mt, data, n_layers, window, c) if window else 0

    if name is None:
        if not isinstance(config, Mapping):
            name = Path(where).parent.name or mt
        else:
            name = str(data.get("_name_or_path") or mt)
    return ModelSpec(
        name=name, source=source or where, model_type=mt, hidden_size=h, num_layers=n_layers,
        num_heads=nq, num_kv_heads=nkv, head_dim=d, intermediate_size=ffn, vocab_size=vocab,
        tie_embeddings=tied, max_position_embeddings=max_pos,
        params=ParamCounts(total=total, active=active, embedding=embedding, lm_head=lm_head,
                           routed_experts=routed),
        num_experts=n_exp if moe_idx else 0, experts_per_token=top_k,
        moe_intermediate_size=ffn_moe, moe_layers=len(moe_idx),
        sliding_window=window if sliding else None, sliding_window_layers=sliding,
        shared_expert_intermediate_size=ffn_shared)


def _sliding_layers(mt: str, data: Mapping[str, Any], n_layers: int, window: int,
                    c: _Cfg) -> int:
    """How many layers use sliding-window attention, as transformers decides it."""
    types = data.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        return sum(1 for t in types if t == "sliding_attention")
    if mt == "gemma2":
        return math.ceil(n_layers / 2)                     # even layers slide
    if mt == "gemma3_text":
        pattern = c.int("sliding_window_pattern", default=6)
        return n_layers - n_layers // pattern              # every pattern-th layer is global
    if mt in ("qwen2", "qwen3"):
        return max(0, n_layers - c.int("max_window_layers", default=28, minimum=0))
    if mt == "qwen2_moe":
        limit = min(n_layers, c.int("max_window_layers", default=28, minimum=0))
        return (limit + 1) // 2
    return n_layers                                        # mistral, mixtral, qwen3_moe
