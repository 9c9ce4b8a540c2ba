"""CPU capability detection (utils/cpu.py) and the machine description benchmarks store (benchmarks/machine.py)."""
import json

import pytest

from utils.cpu import cpu_features, cpu_flags, cpu_model, precision_problem, precision_support

SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = "model name : AMD EPYC 9654\nflags : fpu avx2 avx512f avx512_vnni avx512_bf16\n"
HASWELL = "model name : Intel(R) Xeon(R) CPU E5-2680 v3\nflags : fpu avx avx2 fma\n"


def test_flags_and_model_are_read_from_cpuinfo_text():
    assert {"amx_bf16", "amx_int8", "avx512_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize("cpuinfo, expected", [
    (SAPPHIRE_RAPIDS, {"fp32": "avx512", "bf16": "amx", "int8": "amx"}),
    (ZEN4, {"fp32": "avx512", "bf16": "avx512", "int8": "avx512"}),
    (HASWELL, {"fp32": "avx2", "bf16": "emulated", "int8": "emulated"}),
    ("", {"fp32": "unknown", "bf16": "unknown", "int8": "unknown"}),
])
def test_precision_support_follows_the_isa(cpuinfo, expected):
    assert precision_support(cpu_features(cpu_flags(cpuinfo))) == expected


def test_alder_lake_avx_vnni_counts_as_native_int8():
    assert precision_support(cpu_features({"avx2", "avx_vnni"}))["int8"] == "avx_vnni"


def test_problem_messages_name_the_missing_instructions():
    haswell = precision_support(cpu_features(cpu_flags(HASWELL)))
    assert "avx512_bf16 or amx_bf16" in precision_problem("bf16", haswell)
    assert "silently run in fp32" in precision_problem("bf16", haswell)
    assert "avx512_vnni" in precision_problem("int8", haswell)
    assert precision_problem("fp32", haswell) is None
    zen4 = precision_support(cpu_features(cpu_flags(ZEN4)))
    assert precision_problem("bf16", zen4) is None and precision_problem("int8", zen4) is None
    with pytest.raises(ValueError):
        precision_problem("fp8", zen4)


def test_machine_info_names_cpu_threads_isa_and_versions():
    from benchmarks.machine import machine_info, machine_summary

    info = machine_info()
    json.dumps(info)  # stored in benchmark JSON as is
    assert set(info["isa"]) >= {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx2"}
    assert info["logical_cpus"] >= 1 and info["torch_threads"] >= 1 and info["torch"]
    assert info["precision_support"] == precision_support()
    line = machine_summary(info)
    assert info["cpu_model"] in line and f"torch on {info['torch_threads']} threads" in line


def test_cpu_backends_quick_mode_writes_json_naming_the_machine(tmp_path):
    """Smoke test of benchmarks/cpu_backends.py (no timing asserted: only that it runs and what it records)."""
    pytest.importorskip("onnxruntime")
    from benchmarks.cpu_backends import main

    backends = ["torch-fp32", "ort-int8"]
    try:
        import openvino  # noqa: F401
        backends.append("ov-int8")  # through open_predictor(..., "openvino", precision="int8") like the CLIs
    except ImportError:
        pass
    out = tmp_path / "bench.json"
    assert main(["--quick", "--threads", "1", "--backends", ",".join(backends), "--no_torchvision",
                 "--calib_images", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"] and "isa" in report["machine"]
    assert set(report["results"]) == {"b1", "b2"}
    for row in report["results"].values():
        assert set(row) == set(backends)
        if "ov-int8" in row:
            assert row["ov-int8"]["runtime"]["precision"] == "int8"
        assert all(r["e2e_img_s"] > 0 and r["network_img_s"] > 0 and 0 <= r["gap"] < 1 for r in row.values())


def test_video_pace_quick_mode_compares_pipeline_and_model_on_the_same_frames(tmp_path):
    """Smoke test of benchmarks/video_pace.py: it runs both paths over every frame and records the machine
    (no timing asserted)."""
    from benchmarks.video_pace import main

    out = tmp_path / "pace.json"
    assert main(["--quick", "--backend", "torch", "--precision", "fp32", "--frames", "10", "--size", "96x64",
                 "--batch", "4", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"] and report["settings"]["frames"] == 10
    assert set(report["results"]) == {"default"}  # the one-stream comparison is OpenVINO's
    r = report["results"]["default"]
    assert r["model_only_fps"] > 0 and r["pipeline_fps"] > 0 and len(r["ratios"]) == 1
    assert r["ratio"] == pytest.approx(r["pipeline_fps"] / r["model_only_fps"])
    assert set(report["stages"]) == {"decode", "encode"}


def test_benchmark_prints_and_stores_the_machine(tmp_path, capsys):
    """benchmarks/benchmark.py names its CPU (model, cores, threads, AMX / AVX-512 bf16 / VNNI / AVX2) in its
    output and JSON (no section is run: no timing)."""
    from benchmarks.benchmark import main
    from benchmarks.machine import machine_info

    out = tmp_path / "bench.json"
    assert main(["--sections", "none", "--batches", "1", "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    info = machine_info()
    assert {k: report["machine"][k] for k in info} == info
    assert report["machine"]["device"] == "cpu" and report["machine_summary"].startswith(info["cpu_model"])
    assert f"machine: {report['machine_summary']}" in capsys.readouterr().out


def test_backend_accuracy_writes_one_row_per_backend_and_precision(make_checkpoint, tiny_dataset, tmp_path):
    """Smoke test of benchmarks/backend_accuracy.py on a tiny model: every combination is evaluated or skipped with
    its reason, fp32 on every runtime agrees, and the JSON names the machine."""
    pytest.importorskip("onnxruntime")
    from benchmarks.backend_accuracy import COMBINATIONS, main

    out = tmp_path / "acc.json"
    assert main(["--weights", make_checkpoint(), "--data", str(tiny_dataset), "--calib_images", "2",
                 "--batch_size", "4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"]
    rows = {(r["backend"], r["precision"]): r for r in report["results"]}
    assert set(rows) == set(COMBINATIONS)
    assert all("mAP" in r or r["skipped"] for r in rows.values())
    fp32 = [r["mAP"] for (_, precision), r in rows.items() if precision == "fp32" and "mAP" in r]
    assert len(fp32) >= 2 and max(fp32) - min(fp32) < 1e-3


def test_isa_cap_in_the_environment_hides_what_the_cap_excludes():
    zen4 = cpu_flags(ZEN4)
    as_zen3 = cpu_features(zen4, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert precision_support(as_zen3) == {"fp32": "avx2", "bf16": "emulated", "int8": "emulated"}
    assert precision_support(cpu_features(zen4, environ={"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"})) == {
        "fp32": "avx512", "bf16": "emulated", "int8": "avx512"}
    assert precision_support(cpu_features(zen4, environ={"ATEN_CPU_CAPABILITY": "avx2"}))["fp32"] == "avx2"
    assert cpu_features(zen4, environ={"ONEDNN_MAX_CPU_ISA": "nonsense"}) == cpu_features(zen4, environ={})


def test_isa_cap_names_the_variables_set():
    from utils.cpu import isa_cap

    assert isa_cap({}) is None
    assert isa_cap({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}) == (
        "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2")
