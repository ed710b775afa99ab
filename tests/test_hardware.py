"""The GPU catalog, name lookup, --gpus / --gpu-spec parsing and NVML detection (stand-in)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from homellm import hardware
from homellm.errors import ConfigError
from homellm.hardware import (
    MEASURED_MATMUL_TFLOPS,
    GPUSpec,
    detect_gpus,
    find_gpu,
    gpu_catalog,
    measured_matmul_efficiency,
    parse_gpu_spec,
    parse_gpus,
)

REQUIRED_KEYS = {"rtx-pro-6000", "rtx-pro-6000-maxq", "rtx-pro-6000-server", "rtx-6000-ada",
                 "rtx-5090", "rtx-4090", "l40s", "a100-40g", "a100-80g", "h100-sxm",
                 "h100-pcie", "h200"}


# --- catalog integrity --------------------------------------------------------------------------

def test_catalog_has_the_gpus_the_issue_names() -> None:
    assert set(gpu_catalog()) >= REQUIRED_KEYS


@pytest.mark.parametrize("spec", list(gpu_catalog().values()), ids=lambda s: s.key)
def test_every_entry_is_sourced_and_consistent(spec: GPUSpec) -> None:
    assert spec.source, "every entry names its source"
    assert spec.speeds_known
    assert spec.memory_gb is not None
    # usable GiB as the driver shows it never exceeds the number on the box
    assert 0.9 * spec.memory_gb <= spec.memory_gib <= spec.memory_gb
    assert spec.bandwidth_gbs > 0 and spec.bf16_tflops > 0
    assert spec.tdp_w and spec.pcie_gen in (4, 5)
    # dense, not sparse: FP8 is twice BF16 (both FP32 accumulate); a sparse figure mixed in
    # with a dense one would make this 1 or 4
    if spec.fp8_tflops is not None:
        assert 1.95 <= spec.fp8_tflops / spec.bf16_tflops <= 2.05
    if spec.fp4_tflops is not None:
        assert spec.fp8_tflops is not None and spec.fp4_tflops >= 2 * spec.fp8_tflops * 0.99
    # tags are spelled one way, so a grep finds every unverified figure
    for text in (spec.note, spec.source):
        assert "[unverified]" not in text and "[Recalled]" not in text


def test_dense_figures_not_marketing_ones() -> None:
    cat = gpu_catalog()
    assert cat["rtx-pro-6000"].bf16_tflops == 503.8        # sparse 1008
    assert cat["rtx-pro-6000"].fp4_tflops == 2015          # "4000 AI TOPS" is FP4 sparse
    assert cat["rtx-5090"].bf16_tflops == 209.5            # GeForce: FP32 acc at half rate
    assert cat["rtx-4090"].bf16_tflops == 165.2
    assert cat["h100-sxm"].bf16_tflops == 989              # sparse 1979
    assert cat["h200"].bf16_tflops == cat["h100-sxm"].bf16_tflops
    assert cat["rtx-pro-6000"].memory_gib == pytest.approx(95.6)
    assert cat["h100-sxm"].memory_gib == pytest.approx(79.65, abs=0.01)   # 81559 MiB


def test_conflicting_sources_are_tagged() -> None:
    cat = gpu_catalog()
    assert "[UNVERIFIED]" in cat["rtx-pro-6000-server"].note     # 1792 vs 1597 GB/s
    assert "[recalled]" in cat["h100-pcie"].note
    assert "[recalled]" in cat["rtx-6000-ada"].note


def test_interconnect() -> None:
    cat = gpu_catalog()
    assert cat["rtx-pro-6000"].nvlink_gbs is None and cat["rtx-pro-6000"].p2p is True
    assert cat["rtx-5090"].p2p is False and cat["rtx-4090"].p2p is False
    assert cat["h100-sxm"].nvlink_gbs == 900 and cat["a100-80g"].nvlink_gbs == 600


def test_measured_matmul() -> None:
    assert set(MEASURED_MATMUL_TFLOPS) <= set(gpu_catalog())
    for value, source in MEASURED_MATMUL_TFLOPS.values():
        assert value > 0 and source
    ratio, source = measured_matmul_efficiency("rtx-pro-6000") or (0.0, "")
    assert ratio == pytest.approx(0.73, abs=0.005) and "#160" in source
    assert measured_matmul_efficiency("h200") is None


def test_gpu_catalog_returns_a_copy() -> None:
    gpu_catalog().clear()
    assert gpu_catalog()


# --- lookup -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "key"), [
    ("rtx-pro-6000", "rtx-pro-6000"),
    ("RTX_PRO_6000", "rtx-pro-6000"),
    ("RTX PRO 6000 Blackwell Workstation Edition", "rtx-pro-6000"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "rtx-pro-6000"),
    ("rtx-pro-6000-maxq", "rtx-pro-6000-maxq"),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "rtx-pro-6000-maxq"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "rtx-pro-6000-server"),
    ("h100-sxm", "h100-sxm"),
    ("h100", "h100-sxm"),
    ("H100", "h100-sxm"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("a100-80g", "a100-80g"),
    ("NVIDIA A100-SXM4-80GB", "a100-80g"),
    ("NVIDIA A100-SXM4-40GB", "a100-40g"),
    ("NVIDIA A100-PCIE-40GB", "a100-40g-pcie"),
    ("4090", "rtx-4090"),
    ("rtx 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 5090", "rtx-5090"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA H200", "h200"),
    ("  l40s ", "l40s"),
])
def test_find_gpu(name: str, key: str) -> None:
    assert find_gpu(name).key == key


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "rtx 3090", "", "b200"])
def test_unknown_gpu_asks_for_a_spec(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        find_gpu(name)
    message = str(err.value)
    assert "\n" not in message
    assert "--gpu-spec mem=96,bw=1792,bf16=503.8" in message
    assert "rtx-pro-6000" in message and "h100-sxm" in message
    assert err.value.exit_code == 2


# --- --gpus -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "keys"), [
    ("rtx-pro-6000", ["rtx-pro-6000"]),
    ("2xrtx-pro-6000", ["rtx-pro-6000"] * 2),
    ("2x h100", ["h100-sxm"] * 2),
    ("2 X H100", ["h100-sxm"] * 2),
    ("rtx-pro-6000,rtx-4090", ["rtx-pro-6000", "rtx-4090"]),
    ("2x4090, 1x rtx-5090", ["rtx-4090", "rtx-4090", "rtx-5090"]),
    ("4090", ["rtx-4090"]),
])
def test_parse_gpus(text: str, keys: list[str]) -> None:
    assert [g.key for g in parse_gpus(text)] == keys


@pytest.mark.parametrize("text", ["", "  ", "rtx-pro-6000,", "0xh100", "2xfoo", "h100,,h200",
                                  "5000x h100"])
def test_parse_gpus_errors(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_gpus(text)
    assert "\n" not in str(err.value)


# --- --gpu-spec ---------------------------------------------------------------------------------

def test_parse_gpu_spec_minimal_and_full() -> None:
    spec = parse_gpu_spec("mem=96,bw=1792,bf16=503.8")
    assert (spec.key, spec.memory_gib, spec.bandwidth_gbs, spec.bf16_tflops) == \
        ("custom", 96.0, 1792.0, 503.8)
    assert spec.fp8_tflops is None and "--gpu-spec" in spec.source
    full = parse_gpu_spec(" MEM=24 , bw=1008,bf16=165.2,fp8=330,fp4=660,tdp=450,pcie=4,"
                          "nvlink=0.5", name="my-4090")
    assert full.key == full.name == "my-4090"
    assert (full.fp8_tflops, full.fp4_tflops, full.tdp_w) == (330, 660, 450)
    assert full.pcie_gen == 4 and isinstance(full.pcie_gen, int)
    assert full.nvlink_gbs == 0.5


@pytest.mark.parametrize(("text", "needle"), [
    ("mem=96,bw=1792", "missing bf16="),
    ("bf16=1", "missing mem=, bw="),
    ("mem=96,bw=1792,bf16=fast", "must be a number"),
    ("mem=-1,bw=1792,bf16=1", "out of range"),
    ("mem=0,bw=1792,bf16=1", "out of range"),
    ("mem=nan,bw=1792,bf16=1", "out of range"),
    ("mem=inf,bw=1792,bf16=1", "out of range"),
    ("mem=96,bw=1792,bf16=1,speed=9", "not one of"),
    ("mem=96,bw=1792,bf16=1,fp8", "not one of"),
    ("mem=96,mem=48,bw=1792,bf16=1", "given twice"),
    ("mem=96,bw=1792,bf16=1,pcie=4.5", "whole generation"),
    ("", "not one of"),
])
def test_parse_gpu_spec_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_gpu_spec(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


# --- detection through NVML ---------------------------------------------------------------------

@dataclass
class _Mem:
    total: int


class _StandInNVMLError(Exception):
    pass


def _nvml_stand_in(devices: list[tuple[object, int, int | None]],
                   init_fails: bool = False) -> types.ModuleType:
    """A stand-in for the ``pynvml`` module (no GPU on this machine): only the calls
    detect_gpus makes, with the shapes nvidia-ml-py gives."""
    module = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_fails:
            raise _StandInNVMLError("Driver Not Loaded")

    def max_gen(handle: int) -> int:
        gen = devices[handle][2]
        if gen is None:
            raise _StandInNVMLError("Not Supported")
        return gen

    module.NVMLError = _StandInNVMLError  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: devices[h][0]  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: _Mem(devices[h][1])  # type: ignore[attr-defined]
    module.nvmlDeviceGetMaxPcieLinkGeneration = max_gen  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


def test_detect_without_nvml_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml → ImportError
    assert detect_gpus() is None


def test_detect_without_driver_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _nvml_stand_in([], init_fails=True))
    assert detect_gpus() is None


def test_detect_matches_catalog_and_marks_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = _nvml_stand_in([
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887 * 2**20, 5),
        (b"NVIDIA GeForce RTX 4090", 24564 * 2**20, 3),   # old bindings return bytes
        ("NVIDIA H100 NVL", 95830 * 2**20, None),          # not in the catalog
    ])
    monkeypatch.setitem(sys.modules, "pynvml", stand_in)
    pro, geforce, unknown = detect_gpus() or []

    assert pro.key == "rtx-pro-6000" and pro.speeds_known
    assert pro.memory_gib == pytest.approx(95.59, abs=0.01)
    assert pro.bf16_tflops == 503.8 and pro.pcie_gen == 5
    assert pro.source.startswith("NVML")

    assert geforce.key == "rtx-4090" and geforce.name == "NVIDIA GeForce RTX 4090"
    assert geforce.pcie_gen == 3          # the link this machine gives, not the card's Gen4

    assert not unknown.speeds_known
    assert unknown.key.startswith("detected-") and unknown.name == "NVIDIA H100 NVL"
    assert unknown.memory_gib == pytest.approx(95830 / 1024)
    assert unknown.bandwidth_gbs == 0.0 and unknown.bf16_tflops == 0.0
    assert unknown.pcie_gen is None and "--gpu-spec" in unknown.note
    assert stand_in.calls == ["init", "shutdown"]  # type: ignore[attr-defined]


def test_pynvml_is_imported_lazily() -> None:
    assert "pynvml" not in vars(hardware)
