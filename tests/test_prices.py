"""The dated price table and the ownership defaults."""

from __future__ import annotations

import re

import pytest

from homellm.hardware import gpu_catalog
from homellm.plan import prices
from homellm.plan.prices import (
    CLOUD_PRICES,
    PURCHASE_PRICES,
    Price,
    cheapest_cloud_price,
    cloud_prices,
    purchase_price,
)

DATE = re.compile(r"^20\d\d(-(0[1-9]|1[0-2]))?$")


@pytest.mark.parametrize("price", CLOUD_PRICES, ids=lambda p: f"{p.provider}-{p.gpu_key}")
def test_cloud_price_shape(price: Price) -> None:
    assert price.gpu_key in gpu_catalog()
    assert price.provider in {"Lambda", "RunPod", "Vast.ai", "AWS", "GCP"}
    assert 0.1 < price.usd_per_gpu_hour < 20, "per GPU-hour, never per node"
    assert DATE.match(price.date) and price.source
    assert price.tier in {"on-demand", "spot", "community", "marketplace"}
    if price.usd_per_gpu_hour_high is not None:
        assert price.usd_per_gpu_hour_high > price.usd_per_gpu_hour


def test_every_provider_from_plan_facts_is_present() -> None:
    assert {p.provider for p in CLOUD_PRICES} == {"Lambda", "RunPod", "Vast.ai", "AWS", "GCP"}


def test_lambda_8x_a100_is_per_gpu() -> None:
    (lam,) = [p for p in cloud_prices("a100-80g") if p.provider == "Lambda"]
    assert lam.usd_per_gpu_hour == 2.79
    assert "per GPU" in lam.note and "22.32" in lam.note
    assert 8 * lam.usd_per_gpu_hour == pytest.approx(22.32)
    assert "per GPU" in (prices.__doc__ or "")


def test_cloud_prices_sorted_and_filtered() -> None:
    h100 = cloud_prices("h100-sxm")
    assert len(h100) >= 5
    assert [p.usd_per_gpu_hour for p in h100] == sorted(p.usd_per_gpu_hour for p in h100)
    assert all(p.tier == "spot" for p in cloud_prices("h100-sxm", tier="spot"))
    assert cloud_prices("rtx-4090") == []
    cheapest = cheapest_cloud_price("h100-sxm")
    assert cheapest is not None and cheapest.tier == "on-demand"
    assert cheapest_cloud_price("rtx-4090") is None


def test_aws_node_price_divided_by_eight() -> None:
    (aws,) = [p for p in cloud_prices("h100-sxm") if p.provider == "AWS"]
    assert aws.usd_per_gpu_hour == pytest.approx(55.04 / 8, abs=0.01)


def test_ownership_defaults() -> None:
    assert 0.05 <= prices.ELECTRICITY_USD_PER_KWH <= 0.6
    assert prices.ELECTRICITY_SOURCE
    assert prices.HOST_OVERHEAD_W > 0
    assert 0 < prices.GPU_LOAD_POWER_FRACTION <= 1
    assert prices.AMORTIZATION_YEARS > 0


def test_purchase_prices() -> None:
    for p in PURCHASE_PRICES:
        assert p.gpu_key in gpu_catalog() and p.usd > 0 and p.source and DATE.match(p.date)
    pro = purchase_price("rtx-pro-6000")
    assert pro is not None and pro.usd == 8565
    assert purchase_price("nope") is None


def test_node_only_offers_are_marked() -> None:
    # AWS sells p5/p4d/p4de only as 8-GPU instances; Lambda's 8× quotes are whole nodes
    nodes = {(p.provider, p.gpu_key, p.usd_per_gpu_hour) for p in CLOUD_PRICES
             if p.node_gpus == 8}
    assert nodes == {("AWS", "h100-sxm", 6.88), ("AWS", "a100-80g", 3.43),
                     ("AWS", "a100-40g", 2.74), ("Lambda", "h100-sxm", 3.99),
                     ("Lambda", "a100-80g", 2.79)}
    assert all(p.node_gpus == 1 for p in CLOUD_PRICES if p.provider in {"RunPod", "Vast.ai"})


def test_newest_quote_per_offer_wins() -> None:
    runpod = [p for p in cloud_prices("rtx-pro-6000") if p.provider == "RunPod"]
    assert sorted((p.tier, p.usd_per_gpu_hour) for p in runpod) == [("on-demand", 1.99),
                                                                     ("spot", 0.89)]
    older = [p for p in CLOUD_PRICES if p.provider == "RunPod" and p.gpu_key == "rtx-pro-6000"
             and p.tier == "on-demand"]
    assert {p.usd_per_gpu_hour for p in older} == {1.57, 1.99}   # the history stays in the table
    # a single 1×H100 and the 8×H100 node are two offers: both stay
    lam = sorted(p.usd_per_gpu_hour for p in cloud_prices("h100-sxm") if p.provider == "Lambda")
    assert lam == [3.99, 4.29]
    assert prices.date_key("2026-07") > prices.date_key("2026-03") > prices.date_key("2026")
