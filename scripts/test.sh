#!/usr/bin/env bash
# Install what the project needs (idempotent), lint, and run the test suite.
# Exit status is non-zero on any failure, including a run that collected no tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -r requirements-dev.txt
# The optional Ray extra, so that the tests of the ray executor run (they skip only where it is absent).
python3 -c "import ray" 2>/dev/null || python3 -m pip install -q -r requirements-ray.txt
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m ruff check .
set +e
python3 -m pytest -p no:cacheprovider --timeout=600 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$status"
