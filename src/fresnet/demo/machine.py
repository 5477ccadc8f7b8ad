"""What the demo ran on, for the report: the CPU and its vector instructions, torch's threads and
CPU kernels, and how busy the machine was (the load average at the start and the end of the run)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Optional

# the flags that decide CPU speed for this network (AVX2 only, AVX-512, bf16 / AMX matrix units)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_name_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags from ``/proc/cpuinfo`` (the first processor's;
    the platform's name and no flags where that file is missing): the one place fresnet reads it."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == (platform.processor() or "unknown CPU"):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def describe() -> dict[str, Any]:
    import torch

    name, flags = cpu_name_and_flags()
    return {
        "cpu": name,
        "cpus": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
        "load_average_start": load_average(),
    }
