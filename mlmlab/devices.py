"""Which device and precision a run uses: found, not assumed, and reported with the run."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from pathlib import Path

import torch

from mlmlab.errors import ConfigError


def available_devices() -> list[dict]:
    """Every device this machine offers: each CUDA GPU with its name and memory, MPS, the CPU."""
    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({"id": f"cuda:{index}", "label": f"cuda:{index} {props.name} ({props.total_memory / 2**30:.0f} GiB)"})
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append({"id": "mps", "label": "mps (Apple GPU)"})
    flags = " with bf16" if cpu_has_bf16() else ""
    found.append({"id": "cpu", "label": f"cpu ({torch.get_num_threads()} threads{flags})"})
    return found


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; anything else must exist here."""
    ids = [d["id"] for d in available_devices()]
    if requested == "auto":
        return torch.device(ids[0])
    if requested == "cuda" and any(i.startswith("cuda") for i in ids):
        return torch.device("cuda:0")
    if requested not in ids:
        raise ConfigError(f"device {requested!r} is not available on this machine (available: {', '.join(['auto'] + ids)})")
    return torch.device(requested)


@functools.cache
def _cpuinfo() -> tuple[str, ...]:
    """The lines of /proc/cpuinfo, read once (empty where there is none)."""
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return ()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return frozenset(word for line in _cpuinfo() if line.startswith("flags") for word in line.split(":", 1)[1].split())


def device_name(device: torch.device) -> str:
    """What the device is called: the GPU's name, the CPU's model name (or its architecture)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
        return names[0] if names else os.uname().machine
    return device.type


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX-512 BF16 or AMX), where bf16 autocast wins."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on CUDA with bf16 support and on CPUs with bf16 instructions."""
    if requested == "fp32":
        return "fp32"
    supported = bf16_supported(device)
    if requested == "bf16" and not supported:
        raise ConfigError(f"train.precision = 'bf16': not supported on {device} here (use 'auto' or 'fp32')")
    return "bf16" if supported else "fp32"


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# glibc's malloc hands a freed block of 128 KB or more back to the OS at once (and trims a free heap
# top), so every training step took its activations as fresh pages the kernel had to fault in and
# zero. A training process allocates the same sizes every step, so it keeps what it frees: blocks up
# to 32 MB (glibc's ceiling) come from the heap, and the heap is never trimmed. The price: the
# process's memory stays at its peak between steps. Measured gains: experiments/README-performance.md.
KEEP_FREED_MEMORY = True
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse; False where it is not glibc's."""
    if not KEEP_FREED_MEMORY or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
