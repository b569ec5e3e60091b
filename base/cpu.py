"""What this CPU's vector units can do (torch-free): AVX2, AVX-512, VNNI, BF16, AMX from /proc/cpuinfo.

The INT8 export decides ``reduce_range`` from it (ONNX Runtime's u8s8 kernels without VNNI use
``vpmaddubsw``, whose 16-bit intermediate sums can saturate with full 8-bit weights), and the bench
names it next to the measured peaks.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["CpuIsa", "cpu_isa", "parse_cpu_flags"]

# Linux /proc/cpuinfo flag names -> our field names.
_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


@dataclass(frozen=True)
class CpuIsa:
    """Vector-extension facts of the CPU this process runs on (all False when unknown)."""

    model: str
    arch: str
    avx2: bool = False
    fma: bool = False
    avx512f: bool = False
    avx512bw: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False
    amx_int8: bool = False
    amx_bf16: bool = False
    source: str = "/proc/cpuinfo"

    @property
    def vnni(self) -> bool:
        """INT8 dot-product instructions (AVX-512 VNNI or AVX-VNNI) or AMX INT8."""
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    @property
    def bf16(self) -> bool:
        """Native BF16 arithmetic (AVX-512 BF16 or AMX BF16)."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def summary(self) -> str:
        """The widest extensions in one line, e.g. "AVX2 FMA" or "AVX-512 VNNI BF16 AMX"."""
        parts = []
        parts.append("AVX-512" if self.avx512f else "AVX2" if self.avx2 else "no AVX2")
        if self.fma:
            parts.append("FMA")
        if self.vnni:
            parts.append("VNNI")
        if self.bf16:
            parts.append("BF16")
        if self.amx_tile:
            parts.append("AMX")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "vnni": self.vnni, "bf16": self.bf16, "summary": self.summary}


def parse_cpu_flags(cpuinfo: str) -> tuple[str, set[str]]:
    """(model name, flags of the first processor) from /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def cpu_isa(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuIsa:
    """The ISA of this machine; on a system without /proc/cpuinfo every extension reads False."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return CpuIsa(model=platform.processor() or "unknown", arch=platform.machine(), source="unavailable")
    model, flags = parse_cpu_flags(text)
    return CpuIsa(model=model or platform.processor() or "unknown", arch=platform.machine(),
                  **{field: name in flags for name, field in _FLAGS.items()}, source=str(cpuinfo_path))
