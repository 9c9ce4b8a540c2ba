"""What this CPU can do for reduced-precision inference (a leaf helper: imports nothing of the project).

The x86 ISA features that decide how fast bf16 and int8 run, read from ``/proc/cpuinfo`` (Linux; elsewhere every
feature reads as absent and the caller says "unknown"):

====================  =====================================================================================
``amx_bf16``          Intel AMX tiles for bf16 matrix multiply (Sapphire Rapids and later): the fast bf16 path.
``amx_int8``          AMX for int8: the fast int8 path.
``avx512_bf16``       AVX-512 bf16 dot products (Cooper Lake, Zen 4+): native bf16, slower than AMX.
``avx512_vnni``       AVX-512 int8 dot products (Cascade Lake+, Zen 4+): native int8.
``avx_vnni``          the AVX2 (VEX) form of VNNI (Alder Lake and later client CPUs).
``avx2``              no native bf16 or int8 dot products: bf16 is emulated (slower than fp32) and int8 needs
                      16-bit intermediate sums (``pmaddubsw``; may saturate, hence ``reduce_range``).
====================  =====================================================================================

:func:`precision_support` turns these into one verdict per precision, and :func:`precision_problem` into the
one-line message a CLI prints when a precision would not run natively here (e.g. OpenVINO silently runs fp32 when
asked for bf16 on a CPU without bf16 instructions).
"""
from __future__ import annotations

import os
import platform
from typing import Dict, Iterable, Optional

FEATURES = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
PRECISIONS = ("fp32", "bf16", "int8")
CPUINFO = "/proc/cpuinfo"


def _read_cpuinfo(path: str = CPUINFO) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_flags(cpuinfo: Optional[str] = None) -> frozenset:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (or of the given text); empty if unreadable."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's marketing name (``model name``), else ``platform.processor()``, else ``'unknown'``."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or "unknown"


def cpu_features(flags: Optional[Iterable[str]] = None) -> Dict[str, bool]:
    """``{feature: present}`` for :data:`FEATURES` (``flags`` default: this machine's)."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return {name: name in have for name in FEATURES}


def precision_support(features: Optional[Dict[str, bool]] = None) -> Dict[str, str]:
    """How each precision runs on this CPU: ``{'fp32': ..., 'bf16': ..., 'int8': ...}``.

    Values: ``'amx'``, ``'avx512'`` / ``'avx_vnni'`` (native instructions), ``'emulated'`` (runs, but without
    native instructions: bf16 converts to fp32 per op, int8 uses 16-bit sums), or ``'unknown'`` (no flags could
    be read, e.g. not Linux).
    """
    f = cpu_features() if features is None else features
    if not any(f.values()):
        return {"fp32": "unknown", "bf16": "unknown", "int8": "unknown"}
    bf16 = "amx" if f.get("amx_bf16") else "avx512" if f.get("avx512_bf16") else "emulated"
    int8 = ("amx" if f.get("amx_int8") else "avx512" if f.get("avx512_vnni") else
            "avx_vnni" if f.get("avx_vnni") else "emulated")
    fp32 = "avx512" if f.get("avx512f") else "avx2" if f.get("avx2") else "emulated"
    return {"fp32": fp32, "bf16": bf16, "int8": int8}


def precision_problem(precision: str, support: Optional[Dict[str, str]] = None) -> Optional[str]:
    """None when ``precision`` runs natively on this CPU, else why not (one line, for a warning or UserError)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    how = (precision_support() if support is None else support)[precision]
    if precision == "fp32" or how not in ("emulated", "unknown"):
        return None
    if how == "unknown":
        return f"cannot tell whether this CPU has {precision} instructions ({CPUINFO} unreadable)"
    if precision == "bf16":
        return ("this CPU has no bf16 instructions (avx512_bf16 or amx_bf16): bf16 would be emulated or silently "
                "run in fp32 — use --precision fp32, or int8 where the CPU has VNNI")
    return ("this CPU has no int8 dot-product instructions (avx512_vnni, avx_vnni or amx_int8): int8 runs on "
            "plain AVX2 with 16-bit sums, usually no faster than fp32")


def summary(features: Optional[Dict[str, bool]] = None) -> str:
    """One line: ``'AMD EPYC, 2 threads: avx512_bf16 avx512_vnni avx512f avx2'``."""
    f = cpu_features() if features is None else features
    have = " ".join(name for name in FEATURES if f.get(name)) or "no listed features"
    return f"{cpu_model()}, {os.cpu_count() or '?'} logical CPUs: {have}"
