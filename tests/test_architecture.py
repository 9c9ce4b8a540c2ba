"""The dependency direction of the project (docs/DESIGN.md, "Layers"), checked on every test run.

* ``lint-imports`` (import-linter, installed from requirements-optional.txt by scripts/test.sh) checks the
  contracts in ``.importlinter``: layers, leaf helpers, no cycles.
* ssd.py is a top-level module, which import-linter cannot analyse: its imports are checked here.
* No module imports inside a function, except to defer a heavy optional package (``OPTIONAL_PACKAGES``). Imports
  inside functions hid the import cycles of issue 16. tests/ is not scanned: tests import optional packages inside
  test functions on purpose (to skip when they are missing).
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# heavy or optional packages whose import is deferred to the function that needs it (PLAN.md / issue 16 item 6)
OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "openvino", "nncf", "matplotlib", "pycocotools", "tensorboard",
                     "torch.utils.tensorboard", "torchvision.models.detection"}

def _python_files() -> List[str]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "tests"))
        out += [os.path.relpath(os.path.join(folder, f), ROOT).replace(os.sep, "/")
                for f in sorted(files) if f.endswith(".py")]
    return out


def _imported_names(node: ast.AST) -> List[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] if node.level == 0 else []
    return [alias.name for alias in node.names]  # ast.Import


def function_level_imports(source: str) -> Set[str]:
    """Modules imported inside a function (or method) of ``source``, optional packages excluded."""
    found = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.update(n for n in _imported_names(node)
                                 if not any(n == p or n.startswith(p + ".") for p in OPTIONAL_PACKAGES))
    return found


def _lint_imports() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    exe = exe if os.path.exists(exe) else shutil.which("lint-imports")
    assert exe, "lint-imports not found: pip install -r requirements-optional.txt (scripts/test.sh installs it)"
    return exe


def test_import_contracts_hold():
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_broken_contract_fails_lint_imports(tmp_path):
    # the check can fail: data imports utils.errors, so forbidding it must break the contract
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_packages =\n    data\n    utils\n\n"
                      "[importlinter:contract:x]\nname = data may not import utils.errors\ntype = forbidden\n"
                      "source_modules =\n    data\nforbidden_modules =\n    utils.errors\n")
    proc = subprocess.run([_lint_imports(), "--no-cache", "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "BROKEN" in proc.stdout


def test_ssd_imports_only_data_layers_and_leaf_helpers():
    with open(os.path.join(ROOT, "ssd.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    project = {"data", "layers", "utils", "ssd", "train", "eval", "object_detection", "weights"}
    allowed = ("data", "layers", "utils.errors", "utils.io", "utils.device", "utils.labels")
    imported = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for n in _imported_names(node) if n.split(".")[0] in project}
    bad = sorted(n for n in imported if not any(n == a or n.startswith(a + ".") for a in allowed))
    assert not bad, f"ssd.py imports higher layers: {bad}"


def test_function_level_imports_are_flagged():
    source = ("import os\ndef f():\n    import ssd\n    from utils.io import atomic_write\n    import onnx\n"
              "    import matplotlib.pyplot\nclass A:\n    def g(self):\n        import pycocotools.coco\n"
              "        from . import x\n")
    assert function_level_imports(source) == {"ssd", "utils.io"}


def test_no_imports_inside_functions_except_optional_packages():
    new = {}
    for path in _python_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
            found = function_level_imports(fh.read())
        if found:
            new[path] = sorted(found)
    assert not new, ("imports inside functions (move them to the top of the module; only heavy optional packages "
                     f"{sorted(OPTIONAL_PACKAGES)} may be deferred): {new}")
