#!/usr/bin/env bash
# Create or reuse .venv and install lumbarseg with its pinned stack. Idempotent: a second run
# with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip"
stamp=.venv/.lumbarseg-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi

echo "setup: installing the lumbarseg stack into .venv (first time: ~5 minutes, ~9 GB)" >&2
$PIP install -q --upgrade pip
# torch first: sam2 (a monailabel dependency, shipped as an sdist) builds against it.
$PIP install -q torch==2.14.1 torchvision==0.29.1 "numpy<2" wheel setuptools
[ -n "$(ls .venv/wheels/sam2-1.1.0-*.whl 2>/dev/null)" ] ||
  SAM2_BUILD_CUDA=0 $PIP wheel -q --no-deps --no-build-isolation sam2==1.1.0 -w .venv/wheels
$PIP install -q --find-links .venv/wheels -e ".[test]"
echo "$want" > "$stamp"
echo "setup: done" >&2
