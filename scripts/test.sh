#!/usr/bin/env bash
# Command 2: set up the environment and run the whole test suite (CI runs exactly this).
set -uo pipefail
cd "$(dirname "$0")/.."
SSD_EXTRA_REQUIREMENTS=requirements-optional.txt bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
