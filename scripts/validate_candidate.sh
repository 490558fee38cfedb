#!/usr/bin/env bash
# Judge candidate weights against a baseline before any held-out figure is looked at: findings
# on validation phantoms, findings and Dice on the real data's train and fusion subjects
# (configs/data/split.json), side by side in $OUT/validation.md (scripts/validation_table.py).
#
#   scripts/validate_candidate.sh CANDIDATE_WEIGHTS [BASELINE_WEIGHTS]   # baseline: weights/lite
#
# Settings (environment; paths relative to the repository root):
#   OUT            results folder (default runs/validate/<candidate folder's name>)
#   DATA           real data folder (default ../shared/data)
#   PHANTOM_SEED   seed of the validation phantoms (default 777)
#   PHANTOM_COUNT  how many (default 20)
#   PHANTOMS       their folder, rendered once and kept (default runs/validate/phantoms_s<seed>_n<count>)
#   LUMBARSEG, PYTHON  the commands (default .venv/bin/lumbarseg, .venv/bin/python)
# A result JSON in $OUT is kept when the script runs again: delete it to score again. Every model
# run segments each study once (about 40 s a study on CPU; the shared data has 112 non-holdout studies).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | cut -c3-; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
[ $# -le 2 ] || { usage >&2; exit 2; }
candidate=$1
baseline=${2:-weights/lite}
for weights in "$candidate" "$baseline"; do
  [ -f "$weights/model.json" ] || { echo "$weights: no model.json, not a weights folder" >&2; exit 2; }
done

name=$(basename "$candidate")
# lumbarseg train writes RUN/model: name the results after the run, or every candidate is "model"
[ "$name" = model ] && name=$(basename "$(dirname "$candidate")")
OUT=${OUT:-runs/validate/$name}
DATA=${DATA:-../shared/data}
PHANTOM_SEED=${PHANTOM_SEED:-777}
PHANTOM_COUNT=${PHANTOM_COUNT:-20}
PHANTOMS=${PHANTOMS:-runs/validate/phantoms_s${PHANTOM_SEED}_n${PHANTOM_COUNT}}
LUMBARSEG=${LUMBARSEG:-.venv/bin/lumbarseg}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"

# the manifest is written last: a folder without one was interrupted and is rendered again
[ -f "$PHANTOMS/manifest.csv" ] ||
  "$LUMBARSEG" phantoms --out "$PHANTOMS" --count "$PHANTOM_COUNT" --seed "$PHANTOM_SEED"

result() {  # result JSON lumbarseg-arguments...: the command's output goes to JSON's .log beside it
  local json=$1; shift
  if [ -f "$json" ]; then echo "keep $json"; return; fi
  echo "$LUMBARSEG $* --out $json"
  "$LUMBARSEG" "$@" --out "$json" > "${json%.json}.log" 2>&1 || { echo "failed: see ${json%.json}.log" >&2; exit 1; }
}

for role in candidate baseline; do
  weights=$candidate
  [ $role = baseline ] && weights=$baseline
  result "$OUT/${role}_phantoms.json" evaluate-findings --data "$PHANTOMS" --source model --weights "$weights"
  result "$OUT/${role}_findings.json" evaluate-findings --data "$DATA" --source model --weights "$weights" \
    --groups train fusion
  result "$OUT/${role}_evaluate.json" evaluate --data "$DATA" --weights "$weights" --groups train fusion
done
"$PYTHON" scripts/validation_table.py "$OUT"
