#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt.
# Idempotent: a second run only checks that the requirements did not change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment .venv"
  "$PY" -m venv .venv
fi
want=$(cat requirements.txt ${SSD_EXTRA_REQUIREMENTS:-} 2>/dev/null | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[setup] installing requirements (first run downloads/installs PyTorch: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r requirements.txt ${SSD_EXTRA_REQUIREMENTS:+-r $SSD_EXTRA_REQUIREMENTS}
  echo "$want" > .venv/.requirements.sha256
else
  echo "[setup] .venv is up to date"
fi
