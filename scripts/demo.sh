#!/usr/bin/env bash
# The demo: set up, start the embedded stack (SQLite, local storage, embedded Redis, API, dispatcher, one local
# worker), submit examples/self_cognition.py, follow its logs to the end and print where the checkpoint is.
set -euo pipefail
cd "$(dirname "$0")/.."
TWINKLE_SKIP_SYSTEM=1 bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec twinkle-scheduler up --submit examples/self_cognition.py "$@"
