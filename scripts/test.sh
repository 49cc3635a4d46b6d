#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit, Ray, end-to-end and browser tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p test-artifacts
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
