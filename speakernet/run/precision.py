"""Mixed precision (--mixedprec): its type on each device, the autocast of a run, and whether
the CPU has the bf16 instructions that make it pay."""
import functools

import torch

# x86: AVX-512 BF16 (Cooper Lake, Zen 4 and later) or AMX (Sapphire Rapids); Arm: the BF16
# extension ('bf16' among /proc/cpuinfo's Features).
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def flags_of(cpuinfo_text):
    """The feature flags of /proc/cpuinfo's first processor ('flags' on x86, 'Features' on Arm)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def has_bf16():
    """True or False where /proc/cpuinfo tells; None where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            flags = flags_of(handle.read())
    except OSError:
        return None
    return bool(flags & BF16_FLAGS) if flags else None



def amp_dtype(device):
    """bf16 on a CPU (no loss scaling needed), fp16 on CUDA."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device, enabled):
    """The run's mixed precision as a context factory."""
    return lambda: torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=enabled)
