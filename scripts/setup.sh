#!/usr/bin/env bash
# Create or reuse .venv and install lumbarseg with its pinned stack. Idempotent: a second run
# with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

# The viewer stack (Orthanc + its DICOMweb plugin + headless Chromium) and dicom3tools (dciodvfy
# validates the DICOM we write) come from Debian; installed when missing and we are root (or have
# sudo). Otherwise the viewer tests skip, except in CI.
VIEWER_PACKAGES="orthanc orthanc-dicomweb chromium dicom3tools"
if command -v dpkg >/dev/null && ! dpkg -s $VIEWER_PACKAGES >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" = none ]; then
    echo "setup: $VIEWER_PACKAGES not installed and no root: the viewer tests will skip (apt-get install them)" >&2
  else
    echo "setup: installing $VIEWER_PACKAGES (Debian packages for the viewer stack)" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $VIEWER_PACKAGES >&2 ||
      echo "setup: apt-get install $VIEWER_PACKAGES failed: the viewer tests will skip (fail in CI)" >&2
  fi
fi

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
