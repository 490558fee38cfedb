#!/usr/bin/env bash
# The active-learning benchmark of issue 15 (docs/active_learning.md): every strategy x every
# seed on the four-set pool, then `al-simulate --compare` -> $OUT/summary.json and $OUT/curves.png.
#
#   scripts/al_benchmark.sh                       # the full benchmark (days on 2 cores; see the docs)
#   SEEDS=0 ROUNDS=1 PER_ROUND=1 CANDIDATES=3 PRESET=al_smoke FINETUNE_PRESET=al_smoke \
#       OUT=runs/al_smoke WORK=runs/al_smoke/work scripts/al_benchmark.sh   # a smoke run
#
# Resumable: a run whose curve JSON exists is skipped, and al-simulate resumes a round's
# training from its checkpoints in the seed's work folder (strategies of one seed share it, so
# they share their identical round 0; they run one after another, never side by side).
# Progress: one line per finished round in $OUT/benchmark.log (al-simulate's full log of each
# run beside its curve, <strategy>_s<seed>.log).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT=${DATA_ROOT:-../shared/data}
SETS=${SETS:-"lumbar_vb_t2 lumbar_vb_dixon lumbar_ivd_t2 spider_t2_space"}
STRATEGIES=${STRATEGIES:-"random disagreement disagreement_level disagreement_error disagreement_diverse epistemic"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
INITIAL=${INITIAL:-3}
ROUNDS=${ROUNDS:-6}
PER_ROUND=${PER_ROUND:-2}
CANDIDATES=${CANDIDATES:-24}  # unlabelled studies scored per round (a seeded sample); "all" for the whole pool
MC_SAMPLES=${MC_SAMPLES:-4}
PRESET=${PRESET:-al_round}
FINETUNE_PRESET=${FINETUNE_PRESET:-al_finetune}
OUT=${OUT:-docs/al_benchmark}
WORK=${WORK:-runs/al_benchmark}
LUMBARSEG=${LUMBARSEG:-.venv/bin/lumbarseg}
NICE=${NICE:-10}  # every run at this niceness (not added to the caller's: nice -n 10 on top of it is 19)

data=()
for s in $SETS; do data+=("$DATA_ROOT/$s"); done
candidates=()
[ "$CANDIDATES" != all ] && candidates=(--candidates "$CANDIDATES")
mkdir -p "$OUT" "$WORK"
renice -n "$NICE" -p $$ > /dev/null 2>&1 || true  # lowering our own priority always works; raising it may not
log() { echo "$(date '+%F %T') $*" | tee -a "$OUT/benchmark.log"; }

log "benchmark: seeds [$SEEDS] strategies [$STRATEGIES] initial $INITIAL + $ROUNDS x $PER_ROUND, candidates $CANDIDATES, presets $PRESET/$FINETUNE_PRESET"
began=$SECONDS
for seed in $SEEDS; do
  for strategy in $STRATEGIES; do
    curve="$OUT/${strategy}_s${seed}.json"
    if [ -f "$curve" ]; then log "skip $strategy seed $seed: $curve exists"; continue; fi
    log "start $strategy seed $seed"
    # al-simulate's round lines (INFO "... round r/R: ...", WARNING "FORGOTTEN: ...") go to the
    # benchmark log as they come; everything else (progress bars) to the run's own log.
    "$LUMBARSEG" al-simulate --data "${data[@]}" --strategy "$strategy" --seed "$seed" \
        --initial "$INITIAL" --rounds "$ROUNDS" --per-round "$PER_ROUND" "${candidates[@]}" \
        --mc-samples "$MC_SAMPLES" --preset "$PRESET" --finetune-preset "$FINETUNE_PRESET" \
        --work "$WORK/seed$seed" --out "$curve" 2>&1 \
      | tee "$OUT/${strategy}_s${seed}.log" \
      | grep --line-buffered -E " round [0-9]+/[0-9]+:|FORGOTTEN" >> "$OUT/benchmark.log" || true
    [ -f "$curve" ] || { log "FAILED $strategy seed $seed: see $OUT/${strategy}_s${seed}.log"; exit 1; }
    log "done $strategy seed $seed ($(( (SECONDS - began) / 60 )) min so far)"
  done
done
"$LUMBARSEG" al-simulate --compare "$OUT"/*_s*.json --plot "$OUT/curves.png" --summary "$OUT/summary.json" \
  | tee -a "$OUT/benchmark.log"
log "benchmark finished in $(( (SECONDS - began) / 60 )) min"
