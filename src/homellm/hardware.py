"""GPUs: a catalog of specs with their sources, ``--gpu-spec`` parsing, detection through NVML.

Every figure is *dense* (never the 2:4-sparsity marketing number) and BF16 means BF16 inputs
with FP32 accumulate, which is what training and vLLM/torch matmuls use. GeForce cards run FP32
accumulate at half rate, so their BF16 figure is half the "FP16 tensor" figure on spec sheets.

``memory_gib`` is what the driver reports as total (NVML / ``nvidia-smi`` memory.total), in GiB;
a CUDA context takes a few hundred MiB more before anything is allocated. ``memory_gb`` is the
figure the card is sold with ("96 GB").

Tags in ``note``: ``[recalled]`` not re-checked against a source; ``[UNVERIFIED]`` sources
conflict or are weak. Untagged figures come from the sources in ``source`` (mostly the project's
``shared/reference/plan-facts.md`` §2, which cites them).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, replace

from homellm.errors import ConfigError


@dataclass(frozen=True)
class GPUSpec:
    key: str                       # catalog id used on the command line: "rtx-pro-6000"
    name: str                      # "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"
    memory_gib: float              # usable device memory as the driver reports it, GiB
    bandwidth_gbs: float           # memory bandwidth, GB/s (10^9 B/s)
    bf16_tflops: float             # dense BF16 tensor TFLOPS with FP32 accumulate (not sparse)
    fp8_tflops: float | None = None  # dense FP8
    fp4_tflops: float | None = None  # dense FP4
    tdp_w: float | None = None
    pcie_gen: int | None = None
    nvlink_gbs: float | None = None  # per-GPU NVLink bandwidth; None: no NVLink
    p2p: bool | None = None        # PCIe peer-to-peer works with the stock driver
    source: str = ""               # where each figure came from
    note: str = ""                 # what is unverified
    memory_gb: float | None = None  # marketing capacity, GB as sold ("96 GB")
    speeds_known: bool = True      # False: detected through NVML, not in the catalog;
    #                                bandwidth_gbs and bf16_tflops are then 0.0 (unknown)


_PF = "plan-facts §2"
_NVSMI = "nvidia-smi memory.total"
_PRO_SRC = (f"{_PF}: hmc-tech.com (503.8/1008/2015 dense; '4000 AI TOPS' is FP4 sparse); "
            "95.6 GiB shown: MarcoPizeta/flash-next-rtxpro6000-bench; P2P: vLLM #56128")

_CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
            memory_gib=95.6, memory_gb=96, bandwidth_gbs=1792, bf16_tflops=503.8,
            fp8_tflops=1008, fp4_tflops=2015, tdp_w=600, pcie_gen=5, p2p=True,
            source=_PRO_SRC),
    GPUSpec("rtx-pro-6000-maxq", "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
            memory_gib=95.6, memory_gb=96, bandwidth_gbs=1792, bf16_tflops=439,
            fp8_tflops=878, fp4_tflops=1756, tdp_w=300, pcie_gen=5, p2p=True,
            source=f"{_PF}: Fixstars, technical.city (≈439 derived from 3,511 AI TOPS)",
            note="[recalled] memory_gib assumed equal to the Workstation card; "
                 "[recalled] NVML name"),
    GPUSpec("rtx-pro-6000-server", "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            memory_gib=95.6, memory_gb=96, bandwidth_gbs=1597, bf16_tflops=469,
            fp8_tflops=938, fp4_tflops=1877, tdp_w=600, pcie_gen=5, p2p=True,
            source=f"{_PF} (≈469 derived from 3,753 AI TOPS); "
                   "NVML name: zzc0721/torch-performance-test-data#161",
            note="[UNVERIFIED] bandwidth: sources say 1792 or 1597 GB/s (lower taken); "
                 "[UNVERIFIED] tensor TFLOPS (a measured 417 BF16 is 89% of 469); "
                 "[recalled] memory_gib assumed equal to the Workstation card; "
                 "passive cooling, TDP configurable"),
    GPUSpec("rtx-6000-ada", "NVIDIA RTX 6000 Ada Generation",
            memory_gib=49140 / 1024, memory_gb=48, bandwidth_gbs=960, bf16_tflops=364.2,
            fp8_tflops=728.5, tdp_w=300, pcie_gen=4, p2p=True,
            source=f"{_PF} (bandwidth, TDP, PCIe)",
            note="[recalled] tensor TFLOPS (364.2/728.5 = half of the 728.5/1457 sparse "
                 "datasheet figures); [recalled] 49140 MiB shown (less with ECC on); "
                 "[recalled] P2P"),
    GPUSpec("rtx-5090", "NVIDIA GeForce RTX 5090",
            memory_gib=32607 / 1024, memory_gb=32, bandwidth_gbs=1792, bf16_tflops=209.5,
            fp8_tflops=419, fp4_tflops=1676, tdp_w=575, pcie_gen=5, p2p=False,
            source=f"{_PF}: spheron (209.5 = FP32 accumulate at half rate; FP16 acc 419); "
                   f"{_NVSMI} 32607 MiB: noonghunna/club-3090#1253",
            note="GeForce: FP32 accumulate at half rate; stock driver disables P2P"),
    GPUSpec("rtx-4090", "NVIDIA GeForce RTX 4090",
            memory_gib=24564 / 1024, memory_gb=24, bandwidth_gbs=1008, bf16_tflops=165.2,
            fp8_tflops=330.3, tdp_w=450, pcie_gen=4, p2p=False,
            source=f"{_PF}: hmc-tech.com (FP16-32 165.2; FP16 acc 330); "
                   f"{_NVSMI} 24564 MiB: RLinf/RLinf#255",
            note="GeForce: FP32 accumulate at half rate; stock driver disables P2P"),
    GPUSpec("l40s", "NVIDIA L40S",
            memory_gib=46068 / 1024, memory_gb=48, bandwidth_gbs=864, bf16_tflops=362,
            fp8_tflops=733, tdp_w=350, pcie_gen=4, p2p=True,
            source=f"{_PF}: cyfuture (362 dense, 733 sparse); {_NVSMI} 46068 MiB (ECC on): "
                   "modal-labs/modal-client#2797, akash-network/provider-configs#99",
            note="[recalled] FP8 733 dense; [recalled] P2P"),
    GPUSpec("a100-40g", "NVIDIA A100-SXM4-40GB",
            memory_gib=40960 / 1024, memory_gb=40, bandwidth_gbs=1555, bf16_tflops=312,
            tdp_w=400, pcie_gen=4, nvlink_gbs=600, p2p=True,
            source="NVIDIA A100 datasheet via astroC86/gpu-datasheet (1555 GB/s, 312); "
                   f"{_NVSMI} 40960 MiB: modal-labs/modal-client#2797",
            note="[recalled] TDP 400 W; no FP8 on Ampere"),
    GPUSpec("a100-80g", "NVIDIA A100-SXM4-80GB",
            memory_gib=81920 / 1024, memory_gb=80, bandwidth_gbs=2039, bf16_tflops=312,
            tdp_w=400, pcie_gen=4, nvlink_gbs=600, p2p=True,
            source=f"{_PF}: pricegpu.pages.dev; {_NVSMI} 81920 MiB: "
                   "modal-labs/modal-client#2797; NVML name: NVIDIA/DCGM#152",
            note="no FP8 on Ampere"),
    GPUSpec("a100-40g-pcie", "NVIDIA A100-PCIE-40GB",
            memory_gib=40960 / 1024, memory_gb=40, bandwidth_gbs=1555, bf16_tflops=312,
            tdp_w=250, pcie_gen=4, p2p=True,
            source="NVIDIA A100 datasheet via astroC86/gpu-datasheet; 40960 MiB and NVML "
                   "name: quattor template-library, a published benchmark report",
            note="[UNVERIFIED] TDP: datasheet 250 W, quattor template 300 W; "
                 "optional NVLink bridge for pairs"),
    GPUSpec("a100-80g-pcie", "NVIDIA A100 80GB PCIe",
            memory_gib=81920 / 1024, memory_gb=80, bandwidth_gbs=1935, bf16_tflops=312,
            tdp_w=300, pcie_gen=4, p2p=True,
            source="NVIDIA A100 datasheet (1,935 GB/s PCIe vs 2,039 SXM)",
            note="[recalled] bandwidth, TDP, NVML name and 81920 MiB; "
                 "optional NVLink bridge (600 GB/s) for pairs"),
    GPUSpec("h100-sxm", "NVIDIA H100 80GB HBM3",
            memory_gib=81559 / 1024, memory_gb=80, bandwidth_gbs=3350, bf16_tflops=989,
            fp8_tflops=1979, tdp_w=700, pcie_gen=5, nvlink_gbs=900, p2p=True,
            source=f"{_PF}: pricegpu.pages.dev (989/1979 dense = half of 1979/3958 sparse); "
                   f"{_NVSMI} 81559 MiB: modal-labs/modal-client#2797, wilicc/gpu-burn#114"),
    GPUSpec("h100-pcie", "NVIDIA H100 PCIe",
            memory_gib=81559 / 1024, memory_gb=80, bandwidth_gbs=2000, bf16_tflops=756,
            fp8_tflops=1513, tdp_w=350, pcie_gen=5, p2p=True,
            source=f"{_PF} (bandwidth, TDP)",
            note="[recalled] tensor TFLOPS (756/1513); [recalled] 81559 MiB and NVML name; "
                 "NVLink bridge only"),
    GPUSpec("h200", "NVIDIA H200",
            memory_gib=143771 / 1024, memory_gb=141, bandwidth_gbs=4800, bf16_tflops=989,
            fp8_tflops=1979, tdp_w=700, pcie_gen=5, nvlink_gbs=900, p2p=True,
            source=f"{_PF}: itkb.uw.cz; NVML name: NVIDIA/mig-parted#120",
            note="[recalled] 143771 MiB shown; SXM (the H200 NVL is a different card)"),
)

# Other spellings, matched after _compact(): lowercase, only letters and digits, "nvidia",
# "geforce", "edition", "generation" dropped. NVML names match through GPUSpec.name.
_ALIASES: dict[str, tuple[str, ...]] = {
    "rtx-pro-6000": ("rtx pro 6000 blackwell", "rtx pro 6000 workstation", "pro6000",
                     "rtx pro 6000 blackwell workstation", "rtx-pro-6000-workstation"),
    "rtx-pro-6000-maxq": ("rtx pro 6000 max-q", "rtx pro 6000 blackwell max-q",
                          "rtx pro 6000 blackwell max-q workstation"),
    "rtx-pro-6000-server": ("rtx pro 6000 blackwell server", "rtx-pro-6000-se"),
    "rtx-6000-ada": ("6000 ada", "rtx 6000 ada generation"),
    "rtx-5090": ("5090",),
    "rtx-4090": ("4090",),
    "a100-40g": ("a100-40gb", "a100-sxm-40g", "a100 sxm4 40gb"),
    "a100-80g": ("a100", "a100-80gb", "a100-sxm", "a100-sxm-80g", "a100 sxm4 80gb"),
    "a100-40g-pcie": ("a100-pcie-40gb", "a100 pcie 40gb"),
    "a100-80g-pcie": ("a100-pcie", "a100-80gb-pcie", "a100 pcie 80gb"),
    "h100-sxm": ("h100", "h100-sxm5", "h100 80gb hbm3", "h100 sxm5 80gb"),
    "h100-pcie": ("h100 pcie 80gb",),
    "h200": ("h200-sxm", "h200 141gb hbm3e"),
}

_DROP = re.compile(r"nvidia|geforce|edition|generation")

# Torch BF16 matmul (square, best size) as measured by others; efficiency = value / spec.
# On GeForce cards the measured figure exceeds the dense spec: they boost above the clock
# the spec assumes (still half the FP16-accumulate rate).
MEASURED_MATMUL_TFLOPS: dict[str, tuple[float, str]] = {
    "rtx-pro-6000": (368.43, "torch 2.7 cu128 BF16 matmul 4096³, 73% of 503.8: "
                             "zzc0721/torch-performance-test-data#160"),
    "rtx-pro-6000-server": (417.34, "torch 2.7 cu128 BF16 matmul 8192³ (83% of 503.8, "
                                    "89% of the [UNVERIFIED] 469): "
                                    "zzc0721/torch-performance-test-data#161"),
    "rtx-5090": (236.99, "torch 2.8 cu128 BF16 matmul 10240³ (another run: 240.05, #96): "
                         "zzc0721/torch-performance-test-data#124"),
    "rtx-4090": (164.81, "torch 2.7 cu128 BF16 matmul 2048³: "
                         "zzc0721/torch-performance-test-data#78"),
}


def _compact(text: str) -> str:
    return _DROP.sub("", re.sub(r"[^a-z0-9]", "", text.lower()))


def _build_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in _CATALOG:
        for alias in (spec.key, spec.name, *_ALIASES.get(spec.key, ())):
            key = _compact(alias)
            if index.setdefault(key, spec.key) != spec.key:
                raise AssertionError(f"alias {alias!r} names two GPUs")
    return index


_INDEX = _build_index()
_BY_KEY = {spec.key: spec for spec in _CATALOG}
_SPEC_HINT = "--gpu-spec mem=96,bw=1792,bf16=503.8[,fp8=…,tdp=…] (GiB, GB/s, dense TFLOPS)"


def gpu_catalog() -> dict[str, GPUSpec]:
    """Every catalog GPU by key, in catalog order (a fresh dict: safe to modify)."""
    return dict(_BY_KEY)


def _lookup(name: str) -> GPUSpec | None:
    key = _INDEX.get(_compact(name))
    return _BY_KEY[key] if key else None


def find_gpu(name: str) -> GPUSpec:
    """A catalog GPU by id, alias or NVML name (case, spaces, ``-``/``_`` don't matter)."""
    spec = _lookup(name)
    if spec is None:
        raise ConfigError(f"unknown GPU {name.strip()!r} (known: {', '.join(_BY_KEY)}); "
                          f"describe it with {_SPEC_HINT}")
    return spec


def measured_matmul_efficiency(key: str) -> tuple[float, str] | None:
    """Measured BF16 matmul TFLOPS ÷ the catalog's dense figure, with the measurement's source;
    None when nobody measured this GPU. May exceed 1 on GeForce cards (see above)."""
    found = MEASURED_MATMUL_TFLOPS.get(key)
    if found is None or key not in _BY_KEY:
        return None
    return found[0] / _BY_KEY[key].bf16_tflops, found[1]


_COUNT = re.compile(r"^\s*(\d+)\s*[x×*]\s*(.+?)\s*$", re.IGNORECASE)


def parse_gpus(text: str) -> list[GPUSpec]:
    """``2xrtx-pro-6000``, ``rtx-pro-6000``, ``rtx-pro-6000,rtx-4090``, ``2x h100`` → one
    GPUSpec per physical GPU."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise ConfigError(f"--gpus {text!r}: expected names like 2xrtx-pro-6000 or "
                          "rtx-pro-6000,rtx-4090")
    gpus: list[GPUSpec] = []
    for item in items:
        count, name = 1, item
        match = _COUNT.match(item)
        if match and _lookup(item) is None:
            count, name = int(match.group(1)), match.group(2)
            if not 1 <= count <= 1024:
                raise ConfigError(f"--gpus {item!r}: the count must be 1 to 1024")
        gpus.extend([find_gpu(name)] * count)
    return gpus


# --gpu-spec field → (GPUSpec field, what it is, upper bound of a sane value)
_SPEC_FIELDS: dict[str, tuple[str, str, float]] = {
    "mem": ("memory_gib", "usable memory, GiB", 4096),
    "bw": ("bandwidth_gbs", "memory bandwidth, GB/s", 100_000),
    "bf16": ("bf16_tflops", "dense BF16 TFLOPS", 100_000),
    "fp8": ("fp8_tflops", "dense FP8 TFLOPS", 100_000),
    "fp4": ("fp4_tflops", "dense FP4 TFLOPS", 100_000),
    "tdp": ("tdp_w", "board power, W", 10_000),
    "pcie": ("pcie_gen", "PCIe generation", 8),
    "nvlink": ("nvlink_gbs", "NVLink bandwidth per GPU, GB/s", 100_000),
}
_REQUIRED = ("mem", "bw", "bf16")


def parse_gpu_spec(text: str, name: str = "custom") -> GPUSpec:
    """``mem=96,bw=1792,bf16=503.8[,fp8=…,fp4=…,tdp=…,pcie=…,nvlink=…]`` → a GPUSpec
    (GiB, GB/s, dense TFLOPS, W)."""
    where = f"--gpu-spec {text!r}"
    values: dict[str, float] = {}
    for part in text.split(","):
        field, sep, raw = part.partition("=")
        field = field.strip().lower()
        if not sep or field not in _SPEC_FIELDS:
            raise ConfigError(f"{where}: {part.strip()!r} is not one of "
                              f"{', '.join(f + '=' for f in _SPEC_FIELDS)}")
        if field in values:
            raise ConfigError(f"{where}: {field}= given twice")
        _, what, upper = _SPEC_FIELDS[field]
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{where}: {field}= must be a number ({what})") from None
        if not (math.isfinite(value) and 0 < value <= upper):
            raise ConfigError(f"{where}: {field}={raw.strip()} is out of range "
                              f"({what}, above 0 and at most {upper:g})")
        if field == "pcie" and not value.is_integer():
            raise ConfigError(f"{where}: pcie= must be a whole generation number")
        values[field] = value
    missing = [f for f in _REQUIRED if f not in values]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(f + '=' for f in missing)} "
                          "(mem=GiB, bw=GB/s and bf16=dense TFLOPS are required)")
    kwargs: dict[str, float | int] = {_SPEC_FIELDS[f][0]: v for f, v in values.items()}
    if "pcie_gen" in kwargs:
        kwargs["pcie_gen"] = int(kwargs["pcie_gen"])
    return GPUSpec(key=name, name=name, source=f"user: --gpu-spec {text}", **kwargs)  # type: ignore[arg-type]


def _from_nvml(name: str, total_bytes: int, pcie_gen: int | None) -> GPUSpec:
    memory_gib = total_bytes / 2**30
    spec = _lookup(name)
    if spec is not None:
        return replace(spec, name=name, memory_gib=memory_gib,
                       pcie_gen=pcie_gen or spec.pcie_gen,
                       source=f"NVML (name, memory, PCIe gen); catalog: {spec.source}")
    return GPUSpec(key="detected-" + (_compact(name) or "gpu"), name=name,
                   memory_gib=memory_gib, bandwidth_gbs=0.0, bf16_tflops=0.0,
                   pcie_gen=pcie_gen, speeds_known=False, source="NVML (name, memory, PCIe gen)",
                   note=f"not in the catalog: speeds unknown; give them with {_SPEC_HINT}")


def detect_gpus() -> list[GPUSpec] | None:
    """The GPUs NVML sees, matched to the catalog by name; None without NVML or a driver.

    Needs ``pynvml`` (the ``nvidia-ml-py`` package), imported only here. A GPU not in the
    catalog comes back with NVML's memory, ``speeds_known=False`` and zero speeds.
    """
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    nvml_error: type[BaseException] = getattr(pynvml, "NVMLError", Exception)
    try:
        pynvml.nvmlInit()
    except (nvml_error, OSError):
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # nvidia-ml-py < 11.515 returns bytes
                name = name.decode(errors="replace")
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            try:
                gen: int | None = int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle))
            except nvml_error:
                gen = None
            gpus.append(_from_nvml(name, total, gen))
        return gpus
    except nvml_error:
        return None
    finally:
        with contextlib.suppress(nvml_error):
            pynvml.nvmlShutdown()
