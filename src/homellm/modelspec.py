"""Model architecture facts from a Hugging Face ``config.json`` (or the built-in catalog):
parameter counts, KV-cache bytes per token, what a token reads and computes. Never loads weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int          # per token: MoE counts only experts_per_token experts (+ shared)
    embedding: int       # the input embedding matrix
    lm_head: int         # the output projection; 0 when tied to the input embedding

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

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def kv_bytes_per_token(self, dtype_bytes: float = 2.0) -> float:
        """K and V of every layer: 2 · layers · kv_heads · head_dim · bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes
