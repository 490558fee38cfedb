#!/usr/bin/env bash
# The main job on an embedded default: set up, write three synthetic lumbar spine studies (NIfTI
# and the clinical DICOM layout), load them back and print what each holds.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-runs/demo}
.venv/bin/lumbarseg phantoms --out "$out" --count 3 --seed 7 --dicom
.venv/bin/lumbarseg inspect "$out"/dicom/*
