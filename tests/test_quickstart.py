"""Command 1 of README (scripts/quickstart.sh) end to end, at a tiny size: data -> train -> mAP -> annotated video."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_script_runs_every_step_and_prints_where_the_outputs_are(tmp_path):
    out = tmp_path / "qs"
    env = dict(os.environ, OUT=str(out), NUM="40", ITERS="2", FRAMES="12", BUDGET="300")
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
        # no project .venv (pytest run from another environment): creating one would download PyTorch, so run the
        # steps with this interpreter, which has the requirements since it runs the test suite
        env["SSD_PYTHON"] = sys.executable
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "quickstart.sh")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    # the real CLIs, with their flags, are echoed before they run
    for cmd in ("-m data.synthetic", "train.py --dataset custom", "--preset cpu-demo", "eval.py",
                "object_detection.py"):
        assert cmd in run.stdout, cmd
    ckpt = out / "weights" / "ssd300_custom_final.pth"
    for path in (ckpt, out / "eval.json", out / "annotated.mp4", out / "annotated_frame.png", out / "detections.json"):
        assert path.is_file() and path.stat().st_size > 0, path
        assert str(path) in run.stdout, f"{path} is not named in the summary"
    result = json.loads((out / "eval.json").read_text())
    assert result["num_images"] == 6 and f"VOC07 mAP (test): {result['mAP']:.4f}" in run.stdout
    assert "quickstart done in" in run.stdout
