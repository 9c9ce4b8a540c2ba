#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt.
# Idempotent: a second run only checks that the requirements files did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment .venv"
  "$PY" -m venv .venv
fi
# one stored hash per requirements file: the quickstart (requirements.txt) and the tests (+ optional) share .venv
# without reinstalling each other's set
files="requirements.txt ${SSD_EXTRA_REQUIREMENTS:-}"
stale=0
for f in $files; do
  want=$(sha256sum < "$f" | cut -d' ' -f1)
  have=$(cat ".venv/.sha256-$(basename "$f")" 2>/dev/null || true)
  [ "$want" = "$have" ] || stale=1
done
if [ "$stale" = 1 ]; then
  echo "[setup] installing requirements (first run downloads/installs PyTorch: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r requirements.txt ${SSD_EXTRA_REQUIREMENTS:+-r $SSD_EXTRA_REQUIREMENTS}
  for f in $files; do
    sha256sum < "$f" | cut -d' ' -f1 > ".venv/.sha256-$(basename "$f")"
  done
else
  echo "[setup] .venv is up to date"
fi
