"""Training cost: own hardware vs cloud per GPU-hour, break-even, and every figure's working."""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass

import pytest

from homellm.plan.cost import break_even, cloud_cost, job_cost, own_cost


@dataclass(frozen=True)
class Quote:
    provider: str
    usd_per_gpu_hour: float
    date: str
    source: str
    tier: str = "on-demand"
    node_gpus: int = 1


LAMBDA_A100 = Quote("Lambda", 2.79, "2026-09", "tgarg01/silybench-data: per GPU per hour")


def test_cloud_price_is_per_gpu_hour() -> None:
    # "Lambda 8×A100 ≈ $2.50/h" is a per-GPU price: an 8-GPU job pays it eight times per hour.
    c = cloud_cost(LAMBDA_A100, gpu_key="a100-80g-sxm", n_gpus=8, hours=10.0)
    assert c.cost.value == pytest.approx(2.79 * 8 * 10)
    assert c.cost.value / 10 == pytest.approx(22.32)    # the node's hourly price
    assert c.cost.check() and c.price.check()
    assert "2026-09" in c.price.source


def test_own_cost_electricity_and_amortisation() -> None:
    figs = {f.key: f for f in own_cost(n_gpus=2, hours=100.0, power_w=600.0,
                                       electricity_usd_kwh=0.30, purchase_usd=8000.0,
                                       power_fraction=0.9, host_w=150.0, life_hours=10_000.0)}
    assert figs["cost.own.energy"].value == pytest.approx((2 * 600 * 0.9 + 150) * 100 / 1000)
    assert figs["cost.own.electricity"].value == pytest.approx(123.0 * 0.30)
    assert figs["cost.own.amortisation"].value == pytest.approx(2 * 8000 * 100 / 10_000)
    assert figs["cost.own.total"].value == pytest.approx(36.9 + 160.0)
    assert all(f.check() for f in figs.values())


def test_own_cost_without_purchase_price_is_electricity_only() -> None:
    figs = {f.key: f for f in own_cost(n_gpus=1, hours=10.0, power_w=450.0,
                                       electricity_usd_kwh=0.2, purchase_usd=None)}
    assert "cost.own.amortisation" not in figs
    assert figs["cost.own.total"].value == figs["cost.own.electricity"].value


def test_break_even_hours() -> None:
    figs = {f.key: f for f in break_even(purchase_usd=8565, rent_usd_per_gpu_hour=1.57,
                                         power_w=600, electricity_usd_kwh=0.17,
                                         job_gpu_hours=100, power_fraction=0.9)}
    hourly = 600 * 0.9 / 1000 * 0.17
    assert figs["cost.break_even.gpu_hours"].value == pytest.approx(8565 / (1.57 - hourly))
    assert figs["cost.break_even.job_share"].value == pytest.approx(
        100 / figs["cost.break_even.gpu_hours"].value)
    assert all(f.check() for f in figs.values())
    never = break_even(purchase_usd=1000, rent_usd_per_gpu_hour=0.01, power_w=600,
                       electricity_usd_kwh=0.5, job_gpu_hours=1)
    assert math.isinf(never[-1].value)


def test_job_cost_picks_the_cheaper_and_sorts_quotes() -> None:
    prices = {"rtx-pro-6000": [Quote("RunPod", 1.57, "2026-03", "deploybase"),
                               Quote("RunPod", 0.89, "2026-03", "deploybase", tier="spot")],
              "h100-sxm": [Quote("Lambda", 3.99, "2026-09", "silybench")]}
    plan = job_cost(gpu_key="rtx-pro-6000", n_gpus=1, hours=300.0, power_w=600.0,
                    cloud_hours={"rtx-pro-6000": 300.0, "h100-sxm": 150.0}, prices=prices,
                    electricity_usd_kwh=0.17, purchase_usd=8565.0, life_hours=13_140.0)
    costs = [c.cost.value for c in plan.cloud]
    assert costs == sorted(costs)
    assert plan.cloud[0].provider == "RunPod (spot)"
    assert len({f.key for f in plan.figures()}) == len(plan.figures())   # keys stay unique
    own = next(f for f in plan.own if f.key == "cost.own.total").value
    assert plan.cheapest == ("own" if own <= costs[0] else "RunPod (spot) rtx-pro-6000")
    assert plan.break_even and all(f.check() for f in plan.figures())
    # a costly tariff and a cheap life flip the verdict to renting
    dear = job_cost(gpu_key="rtx-pro-6000", n_gpus=1, hours=300.0, power_w=600.0,
                    cloud_hours={"rtx-pro-6000": 300.0}, prices=prices,
                    electricity_usd_kwh=0.17, purchase_usd=8565.0, life_hours=1000.0)
    assert dear.cheapest == "RunPod (spot) rtx-pro-6000"
    assert "electricity alone" in dear.verdict


def test_job_cost_defaults_come_from_the_price_table(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True)
    class Purchase:
        usd: float
        date: str
        source: str

    table = types.ModuleType("homellm.plan.prices")
    table.ELECTRICITY_USD_PER_KWH = 0.25       # type: ignore[attr-defined]
    table.ELECTRICITY_SOURCE = "test tariff"   # type: ignore[attr-defined]
    table.GPU_LOAD_POWER_FRACTION = 0.8        # type: ignore[attr-defined]
    table.HOST_OVERHEAD_W = 100.0              # type: ignore[attr-defined]
    table.AMORTIZATION_YEARS = 2.0             # type: ignore[attr-defined]
    table.purchase_price = lambda key: Purchase(5000.0, "2026-01", "test shop")  # type: ignore[attr-defined]
    table.cloud_prices = lambda key: [Quote("Test", 2.0, "2026-01", "test")]  # type: ignore[attr-defined]
    import homellm.plan as plan_pkg
    monkeypatch.setitem(sys.modules, "homellm.plan.prices", table)
    monkeypatch.setattr(plan_pkg, "prices", table, raising=False)
    plan = job_cost(gpu_key="x", n_gpus=1, hours=10.0, power_w=500.0, cloud_hours={"x": 10.0})
    figs = {f.key: f for f in plan.own}
    assert figs["cost.own.electricity_price"].value == 0.25
    assert figs["cost.own.electricity_price"].source == "test tariff"
    assert figs["cost.own.energy"].value == pytest.approx((500 * 0.8 + 100) * 10 / 1000)
    assert figs["cost.own.amortisation"].value == pytest.approx(5000 * 10 / (2 * 8760 * 0.5))
    assert plan.cloud[0].cost.value == pytest.approx(20.0)


def test_job_cost_without_prices_or_power_says_so() -> None:
    plan = job_cost(gpu_key="mystery", n_gpus=1, hours=1.0, power_w=None,
                    cloud_hours={"mystery": 1.0}, prices={}, purchase_usd=None)
    assert plan.own == [] and plan.cloud == [] and plan.cheapest == ""
    assert any("power" in n for n in plan.notes)
    assert any("cloud prices" in n for n in plan.notes)


AWS_P5 = Quote("AWS", 6.88, "2026-11", "datareceipts: p5.48xlarge $55.04/h ÷ 8", node_gpus=8)


@pytest.mark.parametrize(("n_gpus", "paid"), [(1, 8), (3, 8), (8, 8), (9, 16)])
def test_node_only_offer_costs_whole_nodes(n_gpus: int, paid: int) -> None:
    c = cloud_cost(AWS_P5, gpu_key="h100-sxm", n_gpus=n_gpus, hours=10.0)
    assert c.cost.value == pytest.approx(6.88 * paid * 10)
    assert c.cost.check() and c.gpus_paid == paid and c.node_gpus == 8
    assert c.usd_per_used_gpu_hour == pytest.approx(6.88 * paid / n_gpus)
    assert f"{paid} paid" in c.cost.label
    assert c.to_json()["gpus_paid"] == paid
    if paid > n_gpus:
        assert f"pays {paid} GPU-hours an hour for the {n_gpus}" in c.cost.note


def test_one_gpu_job_on_a_node_only_offer_says_so_and_breaks_even_at_the_node_price() -> None:
    prices = {"h100-sxm": [AWS_P5, Quote("GCP", 10.98, "2026-09", "silybench")]}
    plan = job_cost(gpu_key="h100-sxm", n_gpus=1, hours=100.0, power_w=700.0,
                    cloud_hours={"h100-sxm": 100.0}, prices=prices,
                    electricity_usd_kwh=0.17, purchase_usd=25000.0)
    aws = next(c for c in plan.cloud if c.provider == "AWS")
    assert aws.cost.value == pytest.approx(6.88 * 8 * 100)    # $5,504, not $688
    assert plan.cloud[0].provider == "GCP"                     # 1×H100 at $10.98 is cheaper
    assert any("whole nodes" in n and "AWS h100-sxm (8 GPUs paid)" in n for n in plan.notes)
    rent = next(f for f in plan.break_even if f.key == "cost.break_even.gpu_hours")
    assert rent.inputs["r"] == pytest.approx(10.98)
    # with GCP gone, renting one H100 means renting the node: 8 × 6.88 an hour per GPU used
    only_aws = job_cost(gpu_key="h100-sxm", n_gpus=1, hours=100.0, power_w=700.0,
                        cloud_hours={"h100-sxm": 100.0}, prices={"h100-sxm": [AWS_P5]},
                        electricity_usd_kwh=0.17, purchase_usd=25000.0)
    rent = next(f for f in only_aws.break_even if f.key == "cost.break_even.gpu_hours")
    assert rent.inputs["r"] == pytest.approx(6.88 * 8)


def test_the_newest_quote_of_an_offer_wins_even_when_dearer() -> None:
    prices = {"rtx-pro-6000": [Quote("RunPod", 1.57, "2026-03", "deploybase"),
                               Quote("RunPod", 1.99, "2026-07", "deploybase"),
                               Quote("RunPod", 0.89, "2026-03", "deploybase", tier="spot")]}
    plan = job_cost(gpu_key="rtx-pro-6000", n_gpus=1, hours=10.0, power_w=600.0,
                    cloud_hours={"rtx-pro-6000": 10.0}, prices=prices,
                    electricity_usd_kwh=0.17, purchase_usd=8565.0)
    quoted = sorted((c.tier, c.price.value, c.date) for c in plan.cloud)
    assert quoted == [("on-demand", 1.99, "2026-07"), ("spot", 0.89, "2026-03")]
    assert any("$1.99" in n for n in plan.notes)               # break-even at today's price


def test_every_price_shows_its_date_and_source() -> None:
    c = cloud_cost(AWS_P5, gpu_key="h100-sxm", n_gpus=1, hours=1.0)
    for text in (c.price.note, c.price.source, c.price.explain(), json.dumps(c.to_json())):
        assert "2026-11" in text and "datareceipts" in text
    plan = job_cost(gpu_key="h100-sxm", n_gpus=1, hours=1.0, power_w=700.0,
                    cloud_hours={"h100-sxm": 1.0}, prices={"h100-sxm": [AWS_P5]},
                    electricity_usd_kwh=0.17, purchase_usd=None)
    assert "2026-11" in plan.verdict and "datareceipts" in plan.verdict
