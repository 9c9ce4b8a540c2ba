"""The machine a benchmark ran on: CPU model, cores, threads, the ISA features that decide bf16/int8 speed, and
the library versions — printed at the top of a run and stored in its JSON, so figures from different CPUs are
never compared as if they were one.

    python -m benchmarks.machine          # prints the summary and the JSON
"""
from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any, Dict, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cpu import FEATURES, cpu_features, cpu_model, precision_support  # noqa: E402
from utils.io import atomic_write  # noqa: E402


def write_report(path: str, report: Dict[str, Any]) -> None:
    """A benchmark's JSON report, written atomically (values JSON lacks, e.g. devices, as text); says where."""
    with atomic_write(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, default=str)
    print(f"wrote {path}")


def _physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where it does not say (VMs often don't)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the benchmark reports it as absent
        return None


def machine_info() -> Dict[str, Any]:
    """What the benchmark ran on (JSON-able). ``usable_cpus`` is this process's affinity (containers/taskset)."""
    features = cpu_features()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "isa": {name: features[name] for name in FEATURES},
        "precision_support": precision_support(features),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
    }


def machine_summary(info: Optional[Dict[str, Any]] = None) -> str:
    """One line naming the machine, for the top of benchmark output and README table captions."""
    info = info or machine_info()
    isa = " ".join(name for name, present in info["isa"].items() if present) or "none of " + " ".join(FEATURES)
    cores = f"{info['physical_cores']} cores / " if info.get("physical_cores") else ""
    return (f"{info['cpu_model']}: {cores}{info['logical_cpus']} threads ({info['usable_cpus']} usable), "
            f"torch on {info['torch_threads']} threads; ISA: {isa}")


if __name__ == "__main__":
    data = machine_info()
    print(machine_summary(data))
    print(json.dumps(data, indent=2))
