"""How much memory this machine has free now: host RAM (for the memory plan and first_pass="auto")
and a CUDA device's free memory. One home for both, used by search.first_pass and pipelines.memory_plan."""
from __future__ import annotations

from typing import Any

from drfast.common.errors import UsageError


def detect_gpu_memory(device: Any = None) -> int:
    """Free bytes of the CUDA device `device` (default: the current one), 0 without one."""
    import torch

    if not torch.cuda.is_available():
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def detect_host_memory() -> int:
    """Host memory available now (psutil when installed, else MemAvailable of /proc/meminfo): free RAM
    plus the page cache the OS can drop."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError) as e:
        raise UsageError("host_memory", "cannot read this machine's memory (no psutil, no /proc/meminfo); "
                         "give it explicitly") from e
