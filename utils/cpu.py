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

A smaller CPU can be reproduced on a bigger one with oneDNN's ``ONEDNN_MAX_CPU_ISA`` (PyTorch's convolutions and
bf16 check, OpenVINO's CPU plugin) and PyTorch's ``ATEN_CPU_CAPABILITY`` (ATen's vectorised kernels).
:func:`cpu_features` honours both caps (:func:`isa_cap`): with ``ONEDNN_MAX_CPU_ISA=AVX2`` a Zen 4 reads as a
Zen 3, so tests and the quickstart decide as they would there. ONNX Runtime's kernels (MLAS) read CPUID and
ignore both variables: :func:`hardware_features` is what the silicon has, whatever the caps.
"""
from __future__ import annotations

import os
import platform
from typing import Dict, Iterable, List, Optional, Tuple

FEATURES = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")

# What each ``ONEDNN_MAX_CPU_ISA`` value leaves of FEATURES (oneDNN's ISA names; DEFAULT / ALL: no cap).
_ONEDNN_CAPS = {
    "SSE41": (), "AVX": (),
    "AVX2": ("avx2",),
    "AVX2_VNNI": ("avx2", "avx_vnni"), "AVX2_VNNI_2": ("avx2", "avx_vnni"),
    "AVX512_CORE": ("avx2", "avx512f"),
    "AVX512_CORE_VNNI": ("avx2", "avx512f", "avx512_vnni"),
    "AVX512_CORE_BF16": ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"),
    "AVX10_1_512": ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_FP16": ("avx2", "avx512f", "avx512_vnni", "avx512_bf16"),
}
# What each ``ATEN_CPU_CAPABILITY`` value leaves (PyTorch's dispatch levels; avx512 and above: no cap).
_ATEN_CAPS = {"default": (), "avx2": ("avx2", "avx_vnni")}
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


def _caps(environ: Optional[Dict[str, str]]) -> List[Tuple[str, frozenset]]:
    """``[(VAR=value, features it leaves), ...]`` for each ISA cap set in the environment (unknown values are
    ignored, as oneDNN and PyTorch ignore them)."""
    env = os.environ if environ is None else environ
    caps = []
    for var, table, norm in (("ONEDNN_MAX_CPU_ISA", _ONEDNN_CAPS, str.upper), ("DNNL_MAX_CPU_ISA", _ONEDNN_CAPS,
                             str.upper), ("ATEN_CPU_CAPABILITY", _ATEN_CAPS, str.lower)):
        value = env.get(var, "").strip()
        if norm(value) in table:
            caps.append((f"{var}={value}", frozenset(table[norm(value)])))
    return caps


def isa_cap(environ: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The ISA caps set in the environment, as written (``'ONEDNN_MAX_CPU_ISA=AVX2'``), or None when none is."""
    return " ".join(name for name, _ in _caps(environ)) or None


def hardware_features(flags: Optional[Iterable[str]] = None) -> Dict[str, bool]:
    """``{feature: present}`` for :data:`FEATURES` as the CPU reports them, ignoring any ISA cap."""
    have = cpu_flags() if flags is None else frozenset(flags)
    return {name: name in have for name in FEATURES}


def cpu_features(flags: Optional[Iterable[str]] = None,
                 environ: Optional[Dict[str, str]] = None) -> Dict[str, bool]:
    """``{feature: usable}`` for :data:`FEATURES`: what the CPU has (``flags`` default: this machine's), less what
    an ISA cap in the environment (:func:`isa_cap`; ``environ`` default: ``os.environ``) takes away."""
    have = hardware_features(flags)
    for _, allowed in _caps(environ):
        have = {name: present and name in allowed for name, present in have.items()}
    return have


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
    cap = isa_cap() if features is None else None
    return f"{cpu_model()}, {os.cpu_count() or '?'} logical CPUs: {have}" + (f" (capped by {cap})" if cap else "")
