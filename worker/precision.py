"""Which arithmetic the network runs in: fp32, or bfloat16 where the CPU computes it natively.

On CPUs with AMX-BF16 or AVX512-BF16 (Intel Sapphire Rapids and later, Cooper Lake, AMD Zen 4 and later)
oneDNN runs the convolutions and matrix products in bfloat16, about 3x faster than fp32 on the same cores;
weights stay fp32 and are rounded to bfloat16 as they are read, and numerically fragile ops (exp, softmax
inputs, box arithmetic, NMS) stay fp32 (TensorFlow's `auto_mixed_precision_onednn_bfloat16` rewrite decides
which). Scores and box edges move a little against fp32 (see worker/README.md).

`auto` picks bfloat16 only where the CPU has it; elsewhere bfloat16 is emulated and slower than fp32.
Importing this module must stay free: no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CHOICES = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags that mean native bfloat16 arithmetic
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty when they cannot be read, e.g. not Linux)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve(choice: str, flags: Iterable[str] | None = None) -> str:
    """ "fp32" or "bf16" for a --precision choice; `auto` looks at the CPU flags (read when not given)."""
    if choice not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice != "auto":
        return choice
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip() == "0":
        return "fp32"  # oneDNN off: TensorFlow would not rewrite anything to bf16
    present = cpu_flags() if flags is None else frozenset(flags)
    return "bf16" if present & BF16_FLAGS else "fp32"


__all__ = ["BF16_FLAGS", "CHOICES", "cpu_flags", "resolve"]
