"""Which float format the hardware runs fast: shared by process 1 (the teacher forward) and
process 2 (training), so neither imports the other for it."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_precision(precision: str) -> str:
    """'auto' → bf16 where the hardware does bf16 matmuls natively, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
