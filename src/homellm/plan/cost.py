"""What a training job costs: on the user's own GPUs (electricity plus the purchase price spread
over the card's working life) and on rented cloud GPUs (dated per-GPU-hour prices), which is
cheaper, and after how many GPU-hours buying a card pays for itself against renting one.

Cloud prices are per GPU-hour: a job on n GPUs for h hours costs price × n × h. (A quote like
"8×A100 ≈ $2.50/h" is per GPU; the node costs eight times that.) Where only whole nodes are
rented (``node_gpus`` > 1: AWS p5/p4d, Lambda's 8× nodes) the job pays for every GPU of the
nodes it needs: price × ceil(n / g) × g × h, so a 1-GPU job on an 8-GPU node pays 8 GPU-hours
an hour. Of several quotes for one offer only the newest counts; every price carries its date
and source into the table, ``--explain`` and ``--json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homellm.plan.figures import Figure, fig
from homellm.plan.prices import newest_quotes

# Defaults, each overridable; homellm.plan.prices states its own and wins when present.
# Average board power while training, as a fraction of the board limit (TDP): training at high
# MFU holds GPUs near their limit. Assumption, not a measurement.
DEFAULT_POWER_FRACTION = 0.9
# What the rest of the machine draws while the GPUs work: CPU, board, fans, PSU losses (W).
DEFAULT_HOST_W = 150.0
# A card's price is spread over its hours of use: 3 years at half use.
DEFAULT_LIFE_YEARS = 3.0
DEFAULT_USE_FRACTION = 0.5
DEFAULT_LIFE_HOURS = DEFAULT_LIFE_YEARS * 8760 * DEFAULT_USE_FRACTION
# Used only when neither the caller nor homellm.plan.prices gives a price (assumption).
FALLBACK_ELECTRICITY_USD_KWH = 0.17


class PriceLike(Protocol):
    provider: str
    usd_per_gpu_hour: float
    date: str
    source: str


PriceSource = Callable[[str], Sequence[PriceLike]] | Mapping[str, Sequence[PriceLike]]


@dataclass(frozen=True)
class CloudCost:
    provider: str
    gpu_key: str
    date: str
    source: str
    hours: Figure          # wall-clock hours of the job on this GPU type
    cost: Figure           # USD for the job
    price: Figure          # USD per GPU-hour, as quoted
    tier: str              # "on-demand", "spot", "community", "marketplace"
    n_gpus: int            # GPUs the job uses
    gpus_paid: int         # GPUs it pays for: whole nodes where only nodes are rented
    node_gpus: int         # GPUs per instance sold (1: any count)

    @property
    def usd_per_used_gpu_hour(self) -> float:
        """What one GPU the job uses costs per hour, idle node GPUs included."""
        return self.price.value * self.gpus_paid / self.n_gpus

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "gpu": self.gpu_key, "tier": self.tier,
                "date": self.date, "source": self.source, "n_gpus": self.n_gpus,
                "gpus_paid": self.gpus_paid, "node_gpus": self.node_gpus,
                "price": self.price.to_json(), "hours": self.hours.to_json(),
                "cost": self.cost.to_json()}


@dataclass(frozen=True)
class CostPlan:
    own: list[Figure]                  # inputs, energy, electricity, amortisation, total
    cloud: list[CloudCost]             # one per quote, cheapest first
    break_even: list[Figure]           # GPU-hours after which buying beats renting
    cheapest: str                      # "own" or "<provider> <gpu_key>"; "" if nothing to compare
    verdict: str                       # one line for people
    notes: list[str] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        out = list(self.own)
        for c in self.cloud:
            out += [c.price, c.hours, c.cost]
        return out + self.break_even


def lookup_prices(prices: PriceSource | None, gpu_key: str) -> list[PriceLike]:
    """Quotes for ``gpu_key`` from the caller's table, else from homellm.plan.prices."""
    if prices is None:
        getter = getattr(_table(), "cloud_prices", None)
        return list(getter(gpu_key)) if callable(getter) else []
    if isinstance(prices, Mapping):
        return newest_quotes(prices.get(gpu_key, []))
    return newest_quotes(prices(gpu_key))


def _table() -> Any:
    try:
        from homellm.plan import prices as table  # the dated price table, its own module
    except ImportError:
        return None
    return table


def default_electricity() -> tuple[float, str]:
    """(USD per kWh, source): homellm.plan.prices if it states one, else our fallback."""
    table = _table()
    value = getattr(table, "ELECTRICITY_USD_PER_KWH", None)
    if isinstance(value, int | float):
        return float(value), str(getattr(table, "ELECTRICITY_SOURCE", "homellm.plan.prices"))
    return FALLBACK_ELECTRICITY_USD_KWH, "assumed; pass your tariff (--electricity-price)"


def default_power() -> tuple[float, float]:
    """(fraction of TDP drawn while training, host watts)."""
    table = _table()
    frac = getattr(table, "GPU_LOAD_POWER_FRACTION", DEFAULT_POWER_FRACTION)
    host = getattr(table, "HOST_OVERHEAD_W", DEFAULT_HOST_W)
    return float(frac), float(host)


def default_life_hours() -> float:
    years = getattr(_table(), "AMORTIZATION_YEARS", DEFAULT_LIFE_YEARS)
    return float(years) * 8760 * DEFAULT_USE_FRACTION


def default_purchase(gpu_key: str) -> tuple[float | None, str]:
    getter = getattr(_table(), "purchase_price", None)
    got = getter(gpu_key) if callable(getter) else None
    if got is None:
        return None, ""
    return float(got.usd), f"{got.source} ({got.date})"


def own_cost(*, n_gpus: int, hours: float, power_w: float, electricity_usd_kwh: float,
             purchase_usd: float | None, power_fraction: float = DEFAULT_POWER_FRACTION,
             host_w: float = DEFAULT_HOST_W, life_hours: float = DEFAULT_LIFE_HOURS,
             electricity_source: str = "", purchase_source: str = "") -> list[Figure]:
    """Figures for running the job on the user's own ``n_gpus`` cards for ``hours``."""
    out = [fig("cost.own.electricity_price", "electricity price", "USD/kWh",
               value=electricity_usd_kwh, source=electricity_source),
           fig("cost.own.power_fraction", "average GPU power / TDP", "", value=power_fraction,
               note="assumption: training holds GPUs near their power limit"),
           fig("cost.own.host_w", "rest of the machine (CPU, fans, PSU losses)", "W",
               value=host_w, note="assumption for one workstation"),
           fig("cost.own.energy", "energy", "kWh", "(n * P * u + W) * t / 1000", n=n_gpus,
               P=power_w, u=power_fraction, W=host_w, t=hours)]
    out.append(fig("cost.own.electricity", "electricity", "USD", "E * e", E=out[-1].value,
                   e=electricity_usd_kwh))
    total_inputs = {"electricity": out[-1].value}
    if purchase_usd is not None:
        out.append(fig("cost.own.purchase", "purchase price per GPU", "USD", value=purchase_usd,
                       source=purchase_source))
        out.append(fig("cost.own.amortisation", "purchase spread over the card's life", "USD",
                       "n * C * t / life", n=n_gpus, C=purchase_usd, t=hours, life=life_hours,
                       note=f"life {life_hours:,.0f} hours of use (default: 3 years at half "
                            "use); pass --life-hours"))
        total_inputs["amortisation"] = out[-1].value
    out.append(fig("cost.own.total", "own hardware, total", "USD", " + ".join(total_inputs),
                   **total_inputs))
    return out


def cloud_cost(price: PriceLike, *, gpu_key: str, n_gpus: int, hours: float,
               slug: str = "") -> CloudCost:
    slug = slug or f"{price.provider}.{gpu_key}".lower().replace(" ", "_")
    tier = getattr(price, "tier", "on-demand") or "on-demand"
    node = int(getattr(price, "node_gpus", 1) or 1)
    who = price.provider if tier == "on-demand" else f"{price.provider} ({tier})"
    dated = f"{price.date}, {price.source}"
    offer_note = getattr(price, "note", "")
    quote = fig(f"cost.cloud.{slug}.price", f"{who} {gpu_key} per GPU-hour",
                "USD/GPU-h", value=float(price.usd_per_gpu_hour), source=dated,
                note=f"{dated}; {offer_note}" if offer_note else dated)
    h = fig(f"cost.cloud.{slug}.hours", f"job on {n_gpus}× {gpu_key}", "h", value=hours)
    if node == 1:
        cost = fig(f"cost.cloud.{slug}.cost", f"{who}, {n_gpus}× {gpu_key}", "USD",
                   "r * n * t", r=quote.value, n=n_gpus, t=hours,
                   note="per-GPU-hour price × GPUs × hours")
        paid = n_gpus
    else:
        nodes = -(-n_gpus // node)
        paid = nodes * node
        cost = fig(f"cost.cloud.{slug}.cost",
                   f"{who}, {n_gpus}× {gpu_key} (whole {node}-GPU node"
                   f"{'s' if nodes > 1 else ''}: {paid} paid)", "USD",
                   "r * ceil(n / g) * g * t", r=quote.value, n=n_gpus, g=node, t=hours,
                   note=f"sold only as whole {node}-GPU nodes: the job pays {paid} GPU-hours "
                        f"an hour for the {n_gpus} it uses")
    return CloudCost(who, gpu_key, str(price.date), price.source, h, cost, quote, tier,
                     n_gpus, paid, node)


def break_even(*, purchase_usd: float, rent_usd_per_gpu_hour: float, power_w: float,
               electricity_usd_kwh: float, job_gpu_hours: float,
               power_fraction: float = DEFAULT_POWER_FRACTION) -> list[Figure]:
    """GPU-hours after which owning one more card costs less than renting one (the card's own
    electricity counted; the host runs either way)."""
    run = fig("cost.break_even.own_hourly", "one card's electricity per hour", "USD/h",
              "P * u / 1000 * e", P=power_w, u=power_fraction, e=electricity_usd_kwh)
    if rent_usd_per_gpu_hour <= run.value:
        return [run, fig("cost.break_even.gpu_hours", "buying pays for itself after", "GPU-h",
                         value=float("inf"), note="renting costs less than the electricity")]
    be = fig("cost.break_even.gpu_hours", "buying a card pays for itself after", "GPU-h",
             "C / (r - o)", C=purchase_usd, r=rent_usd_per_gpu_hour, o=run.value,
             note="the same for a second card: each card's hours count")
    days = fig("cost.break_even.days", "that is, busy round the clock", "days", "H / 24",
               H=be.value)
    share = fig("cost.break_even.job_share", "this job's share of it", "", "j / H",
                j=job_gpu_hours, H=be.value)
    return [run, be, days, share]


def job_cost(*, gpu_key: str, n_gpus: int, hours: float, power_w: float | None,
             cloud_hours: Mapping[str, float], prices: PriceSource | None = None,
             electricity_usd_kwh: float | None = None, purchase_usd: float | None = None,
             power_fraction: float | None = None, host_w: float | None = None,
             life_hours: float | None = None) -> CostPlan:
    """The job on the user's ``n_gpus`` × ``gpu_key`` for ``hours``, against renting each GPU
    type in ``cloud_hours`` (gpu_key → the job's hours on ``n_gpus`` of them). None means the
    default of homellm.plan.prices, else of this module."""
    notes: list[str] = []
    e_src = "given"
    if electricity_usd_kwh is None:
        electricity_usd_kwh, e_src = default_electricity()
    frac, host = default_power()
    power_fraction = frac if power_fraction is None else power_fraction
    host_w = host if host_w is None else host_w
    life_hours = default_life_hours() if life_hours is None else life_hours
    p_src = "given"
    if purchase_usd is None:
        purchase_usd, p_src = default_purchase(gpu_key)
        if purchase_usd is None:
            notes.append(f"no purchase price for {gpu_key}: pass one to include amortisation")
    own: list[Figure] = []
    if power_w is None:
        notes.append(f"no power figure for {gpu_key}: pass the GPU's power to price electricity")
    else:
        own = own_cost(n_gpus=n_gpus, hours=hours, power_w=power_w,
                       electricity_usd_kwh=electricity_usd_kwh, purchase_usd=purchase_usd,
                       power_fraction=power_fraction, host_w=host_w, life_hours=life_hours,
                       electricity_source=e_src, purchase_source=p_src)
    cloud: list[CloudCost] = []
    seen: dict[str, int] = {}
    for k, h in cloud_hours.items():
        for p in lookup_prices(prices, k):
            slug = f"{p.provider}.{k}".lower().replace(" ", "_")
            seen[slug] = seen.get(slug, 0) + 1
            if seen[slug] > 1:     # a second quote from the same provider (spot, community)
                slug += f".{seen[slug]}"
            cloud.append(cloud_cost(p, gpu_key=k, n_gpus=n_gpus, hours=h, slug=slug))
    cloud.sort(key=lambda c: c.cost.value)
    if not cloud:
        notes.append("no cloud prices to compare with")
    same = [c for c in cloud if c.gpu_key == gpu_key]
    same = [c for c in same if c.tier == "on-demand"] or same   # spot can be taken away
    be: list[Figure] = []
    if same and purchase_usd is not None and power_w is not None:
        rent = same[0].usd_per_used_gpu_hour        # idle node GPUs are paid for too
        be = break_even(purchase_usd=purchase_usd, rent_usd_per_gpu_hour=rent,
                        power_w=power_w, electricity_usd_kwh=electricity_usd_kwh,
                        job_gpu_hours=hours * n_gpus, power_fraction=power_fraction)
        notes.append(f"break-even against {same[0].provider} at ${rent:.2f} per GPU used "
                     f"an hour ({same[0].date}, {same[0].source})")
    whole_nodes = [f"{c.provider} {c.gpu_key} ({c.gpus_paid} GPUs paid)" for c in cloud
                   if c.gpus_paid > n_gpus]
    if whole_nodes:
        notes.append(f"sold only as whole nodes, so this {n_gpus}-GPU job pays for idle GPUs: "
                     + ", ".join(whole_nodes))
    cheapest, verdict = _verdict(own, cloud)
    return CostPlan(own, cloud, be, cheapest, verdict, notes)


def _verdict(own: list[Figure], cloud: list[CloudCost]) -> tuple[str, str]:
    total = next((f for f in own if f.key == "cost.own.total"), None)
    elec = next((f for f in own if f.key == "cost.own.electricity"), None)
    if total is None or not cloud:
        return "", "not enough prices to compare"
    best = cloud[0]
    name = f"{best.provider} {best.gpu_key}"
    if total.value <= best.cost.value:
        return "own", (f"own hardware: ${total.value:,.0f} against ${best.cost.value:,.0f} "
                       f"on {name} ({best.date}, {best.source})")
    marginal = ("" if elec is None or elec.value > best.cost.value else
                f"; if the cards are already paid for, electricity alone is "
                f"${elec.value:,.0f}")
    return name, (f"{name}: ${best.cost.value:,.0f} ({best.date}, {best.source}) against "
                  f"${total.value:,.0f} on own hardware{marginal}")
