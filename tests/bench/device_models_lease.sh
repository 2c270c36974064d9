#!/usr/bin/env bash
# One device call: for each model in $MODELS, `tokenjoule validate run --quick --scenario-set models` (a quick
# whole-iteration grid, then about a minute of replays), inside the device tool's 600 s; the folders come back as
# one archive ($OUT/models.tgz, the tool returns at most 8 files). Run from the repository root on the device:
#   MODELS="olmoe-1b-7b llama-3.2-1b" bash tests/bench/device_models_lease.sh
set -u
mkdir -p /tmp/p && ln -sfn "$PWD" /tmp/p/tokenjoule && export PYTHONPATH=/tmp/p
WORK=/tmp/models_lease && mkdir -p "$WORK"
LIMIT_S=${LIMIT_S:-575}
T0=$(date +%s)
for m in $MODELS; do
  left=$(( LIMIT_S - ($(date +%s) - T0) ))
  if (( left < 110 )); then echo "skipping $m: ${left} s left"; continue; fi
  budget=$(( left - 15 < ${PER_MODEL_S:-200} ? left - 15 : ${PER_MODEL_S:-200} ))
  echo "== $m (budget ${budget} s, $(( $(date +%s) - T0 )) s into the call)"
  timeout $(( left - 5 )) python3 -m tokenjoule validate run --model "$m" --quick --scenario-set models \
    --budget-s "$budget" --mode "${MODE:-cudagraph}" --out "$WORK/$m" > "$WORK/$m.stdout" 2>&1
  echo "rc=$? after $(( $(date +%s) - T0 )) s"; tail -8 "$WORK/$m.stdout"
done
tar czf "$OUT/models.tgz" -C "$WORK" .
