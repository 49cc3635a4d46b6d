#!/usr/bin/env bash
# Set up (idempotent), lint (ruff, mypy) and run the whole test suite: unit, Ray, end-to-end and browser tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
# TWINKLE_SKIP_LINT=1 skips ruff and mypy (the inner dev loop); CI always runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
mkdir -p test-artifacts
# Linters first: they take seconds, and a finding fails the run before any test starts.
if [ "${TWINKLE_SKIP_LINT:-0}" != "1" ]; then
  echo "==> ruff check ."
  ruff check . || { echo "ruff found problems (above): fix them, or 'ruff check --fix .' for the safe ones"; exit 1; }
  echo "==> mypy (the packages listed in pyproject.toml)"
  mypy || { echo "mypy found type errors (above): fix them before the tests run"; exit 1; }
fi
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = "5" ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
