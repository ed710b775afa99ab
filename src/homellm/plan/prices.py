"""Dated prices for cost estimates: cloud $/GPU-hour, electricity, GPU purchase prices.

Prices move weekly; every entry carries the month it was read and where. All are defaults the
user overrides (``plan`` takes its own flags for them); none is fetched at run time.

Cloud prices are **per GPU per hour, on demand** unless ``tier`` says otherwise. Providers
quote 8-GPU nodes too: Lambda's "$2.79" for 8×A100 80GB is per GPU, so the node costs
8 × 2.79 = $22.32/h (the seed's "8×A100 ≈ $2.50/hour" could only be a per-GPU price).
Where only whole nodes are sold (AWS p5/p4d/p4de, Lambda's 8× offers) ``node_gpus`` says how
many GPUs one instance has: a job on fewer still pays for all of them.
Sources as cited in the project's ``shared/reference/plan-facts.md`` §6. The table keeps older
quotes as history; :func:`newest_quotes` keeps only the newest per provider, GPU, tier and
instance size, and :func:`cloud_prices` returns only those.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


class _Quote(Protocol):
    provider: str
    date: str


Q = TypeVar("Q", bound=_Quote)


@dataclass(frozen=True)
class Price:
    provider: str               # "Lambda", "RunPod", "Vast.ai", "AWS", "GCP"
    gpu_key: str                # homellm.hardware catalog key: "h100-sxm"
    usd_per_gpu_hour: float     # per GPU, not per node
    date: str                   # "YYYY-MM" the price was read
    source: str
    note: str = ""
    tier: str = "on-demand"     # "on-demand", "spot", "community", "marketplace"
    usd_per_gpu_hour_high: float | None = None  # upper end when the source gives a range
    node_gpus: int = 1          # GPUs in the smallest instance sold; 8 = whole 8-GPU nodes only


_SILY = "tgarg01/silybench-data"
CLOUD_PRICES: tuple[Price, ...] = (
    # Lambda
    Price("Lambda", "h100-sxm", 3.99, "2026-09", f"{_SILY}; api-evangelist/lambda-labs",
          note="8×H100 SXM node, per GPU (node $31.92/h)", node_gpus=8),
    Price("Lambda", "h100-sxm", 4.29, "2026-09", f"{_SILY}; api-evangelist/lambda-labs",
          note="1×H100 SXM instance"),
    Price("Lambda", "a100-80g", 2.79, "2026-09",
          f"{_SILY}; api-evangelist/lambda-labs ('per GPU per hour')",
          note="8×A100 80GB SXM node, per GPU: the node is 8 × 2.79 = $22.32/h",
          node_gpus=8),
    # RunPod
    Price("RunPod", "h100-sxm", 2.69, "2026-09", f"{_SILY}; datareceipts", tier="community"),
    Price("RunPod", "h100-sxm", 3.49, "2026-09", f"{_SILY}; datareceipts",
          usd_per_gpu_hour_high=3.99, note="secure cloud"),
    Price("RunPod", "a100-80g", 1.39, "2026-09", f"{_SILY}; datareceipts", tier="community"),
    Price("RunPod", "a100-80g", 1.59, "2026-09", f"{_SILY}; datareceipts",
          note="secure cloud"),
    Price("RunPod", "h200", 3.59, "2026-09", f"{_SILY}; datareceipts", tier="community"),
    Price("RunPod", "h200", 4.59, "2026-09", f"{_SILY}; datareceipts", note="secure cloud"),
    Price("RunPod", "rtx-pro-6000", 1.57, "2026-03", "deploybase",
          note="RTX PRO 6000 edition not stated"),
    Price("RunPod", "rtx-pro-6000", 0.89, "2026-03", "deploybase", tier="spot",
          note="RTX PRO 6000 edition not stated"),
    Price("RunPod", "rtx-pro-6000", 1.99, "2026-07", "deploybase",
          note="RTX PRO 6000 edition not stated; newer than the 1.57 quote"),
    # Vast.ai: a marketplace, prices swing daily
    Price("Vast.ai", "h100-sxm", 2.40, "2026-09", f"{_SILY}; usagepricing",
          tier="marketplace", usd_per_gpu_hour_high=6.15,
          note="median range; swings daily"),
    Price("Vast.ai", "a100-80g", 1.17, "2026-09", f"{_SILY}; usagepricing",
          tier="marketplace", usd_per_gpu_hour_high=1.21),
    Price("Vast.ai", "rtx-pro-6000-server", 0.93, "2026-09", f"{_SILY}; usagepricing",
          tier="marketplace", note="lowest offers ('from')"),
    # AWS, us-east-1, instance price ÷ 8 GPUs
    Price("AWS", "h100-sxm", 6.88, "2026-11", "datareceipts",
          note="p5.48xlarge $55.04/h ÷ 8, us-east-1 (the older $98.32/h predates the 2025 cut)",
          node_gpus=8),
    Price("AWS", "a100-80g", 3.43, "2026-11", "datareceipts",
          note="p4de.24xlarge $27.45/h ÷ 8, us-east-1", node_gpus=8),
    Price("AWS", "a100-40g", 2.74, "2026-11", "datareceipts",
          note="p4d.24xlarge ÷ 8, us-east-1", node_gpus=8),
    # GCP
    Price("GCP", "h100-sxm", 10.98, "2026-09", _SILY, note="a3-highgpu-1g"),
    Price("GCP", "h100-sxm", 6.57, "2026-09", _SILY, tier="spot", note="a3-highgpu-1g"),
)


def date_key(date: str) -> tuple[int, ...]:
    """"2026-07" → (2026, 7); a year alone sorts before its months."""
    return tuple(int(part) for part in str(date).split("-"))


def newest_quotes(quotes: Iterable[Q]) -> list[Q]:
    """The newest quote(s) of each offer, an offer being one provider, GPU, tier and instance
    size: a price read later replaces an older one, cheaper or not. Order is kept."""
    quotes = list(quotes)

    def offer(q: Q) -> tuple[str, str, str, int]:
        return (q.provider, getattr(q, "gpu_key", ""), getattr(q, "tier", "on-demand"),
                getattr(q, "node_gpus", 1))

    newest: dict[tuple[str, str, str, int], tuple[int, ...]] = {}
    for q in quotes:
        newest[offer(q)] = max(newest.get(offer(q), ()), date_key(q.date))
    return [q for q in quotes if date_key(q.date) == newest[offer(q)]]


def cloud_prices(gpu_key: str, tier: str | None = None) -> list[Price]:
    """The current prices for one catalog GPU key (the newest quote of each offer), cheapest
    first; ``tier`` keeps only that tier."""
    found = [p for p in newest_quotes(CLOUD_PRICES)
             if p.gpu_key == gpu_key and (tier is None or p.tier == tier)]
    return sorted(found, key=lambda p: p.usd_per_gpu_hour)


def cheapest_cloud_price(gpu_key: str, tier: str | None = "on-demand") -> Price | None:
    """The cheapest price for ``gpu_key`` in ``tier`` (on-demand by default), or None."""
    found = cloud_prices(gpu_key, tier)
    return found[0] if found else None


# --- owning a GPU: defaults the user overrides -------------------------------------------------

#: Electricity, USD per kWh. Assumption: about the US average residential price in 2024–2025
#: (EIA Electric Power Monthly, ≈16–17 ¢/kWh) [recalled]. European households pay roughly
#: twice that; set your own tariff.
ELECTRICITY_USD_PER_KWH = 0.17
ELECTRICITY_SOURCE = "assumption: US average residential, EIA Electric Power Monthly [recalled]"

#: Power the rest of the machine draws while the GPUs work (CPU, board, fans, PSU losses), W.
#: An assumption for one workstation, not a measurement.
HOST_OVERHEAD_W = 150.0

#: Fraction of TDP a GPU draws under sustained training or batched serving. Assumption: cards
#: usually sit near their power limit under dense matmuls; decode at batch 1 draws less.
GPU_LOAD_POWER_FRACTION = 0.9

#: Years over which a purchase is spread when comparing with renting. Assumption.
AMORTIZATION_YEARS = 3.0


@dataclass(frozen=True)
class PurchasePrice:
    gpu_key: str
    usd: float
    date: str
    source: str
    note: str = ""


PURCHASE_PRICES: tuple[PurchasePrice, ...] = (
    PurchasePrice("rtx-pro-6000", 8565, "2026-04",
                  "newgearhub.com GTC 2026 article (MSRP $8,565; retail $8,000–9,200)",
                  note="secondary source"),
    PurchasePrice("rtx-pro-6000-maxq", 8565, "2026-04", "assumed equal to the Workstation MSRP",
                  note="[UNVERIFIED]"),
    PurchasePrice("rtx-5090", 1999, "2025-01", "NVIDIA launch MSRP",
                  note="[recalled]; street prices have run well above MSRP"),
    PurchasePrice("rtx-4090", 1599, "2022-10", "NVIDIA launch MSRP",
                  note="[recalled]; discontinued, used prices vary"),
    PurchasePrice("rtx-6000-ada", 6800, "2022-12", "NVIDIA launch price",
                  note="[recalled]"),
    PurchasePrice("h100-pcie", 25000, "2025", "widely reported street price",
                  note="[UNVERIFIED]; varies 25–30k USD"),
)


def purchase_price(gpu_key: str) -> PurchasePrice | None:
    """The purchase price default for ``gpu_key``, or None (ask the user)."""
    return next((p for p in PURCHASE_PRICES if p.gpu_key == gpu_key), None)
