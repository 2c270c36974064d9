#!/usr/bin/env bash
# One device call of issue 19's host check: each step of $STEPS in turn, inside the device tool's 600 s, outputs
# archived as $OUT/<step>.tgz. Run from the repository root on the device:
#   STEPS="hf_check eager_check" bash tests/bench/device_host_check.sh
# Steps:
#   hf_check     `validate hf --short-from` the shipped H200 HF profile: the host check (seconds), then the scenarios
#   eager_check  `validate run --mode eager --short-from` the shipped H200 eager profile, then 4 eager scenarios
#   hf_full      `validate hf`: this host's own full generate() calibration, then the scenarios
set -u
mkdir -p /tmp/p && ln -sfn "$PWD" /tmp/p/tokenjoule && export PYTHONPATH=/tmp/p PYTHONUNBUFFERED=1
T0=$(date +%s)
LIMIT_S=${LIMIT_S:-580}
left() { echo $(( LIMIT_S - ($(date +%s) - T0) )); }
for step in $STEPS; do
  w=/tmp/hostcheck/$step && rm -rf "$w" && mkdir -p "$w"
  l=$(left)
  echo "== $step ($(( $(date +%s) - T0 )) s into the call, ${l} s left)"
  case $step in
    hf_check) timeout $(( l - 5 )) python3 -m tokenjoule validate hf --short-from h200-llama-3.1-8b-hf-eager \
                --budget-s "${HF_CHECK_S:-250}" --out "$w/run" > "$w/device.stdout" 2>&1 ;;
    eager_check) timeout $(( l - 5 )) python3 -m tokenjoule validate run --mode eager \
                --short-from calibrate/profiles/h200-llama-3.1-8b-tokenjoule-eager.json \
                --scenarios "${EAGER_SCENARIOS:-conv_continuous_x0.5,static_b8_i1024_o256,code_continuous_x1,conv_chunked_x1}" \
                --budget-s $(( l - 20 )) --out "$w/run" > "$w/device.stdout" 2>&1 ;;
    hf_full) timeout $(( l - 5 )) python3 -m tokenjoule validate hf --budget-s $(( l - 20 )) --out "$w/run" \
                > "$w/device.stdout" 2>&1 ;;
  esac
  echo "rc=$? after $(( $(date +%s) - T0 )) s"; tail -12 "$w/device.stdout"
  cp "$w/device.stdout" "$w/run/" 2>/dev/null
  tar czf "$OUT/$step.tgz" -C "$w" run
done
