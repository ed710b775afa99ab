"""GPUs: a catalog of specs with their sources, ``--gpu-spec`` parsing, detection through NVML."""

from __future__ import annotations

from dataclasses import dataclass


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
