#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine with a `multir` binary built on a
# CPU machine (see README, "GPU"). It trains the shipped small model on
# phantoms generated on the spot, evaluates it on a cohort from an unseen
# seed (fp32 and fp16 autocast), and benchmarks the network through tch
# against the same network in PyTorch eager (bench/model/reference.py) on the
# same card, one after the other.
#
#   BIN=path/to/multir OUT=results bench/gpu/run.sh [train|eval|bench|all]...
#
# Knobs: TRAIN_SCANS (120), TEST_SCANS (60), TRAIN_STEPS (20000),
# TRAIN_MINUTES (3.5), TRAIN_BATCH (12), RESUME (a last.safetensors to continue from),
# CHECKPOINT (model to evaluate; default: the one just trained).
# $OUT is kept to a few files (the device tool returns only so many):
# run/{best,last}.safetensors, history, summaries, bench.jsonl.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$repo/target/release/multir}
OUT=${OUT:-$repo/out/gpu}
PY=${PY:-$(command -v /opt/torch/.venv/bin/python || command -v python3)}
mkdir -p "$OUT"
torch_lib=$("$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
# The binary was linked against a CPU libtorch; the card's PyTorch provides
# the same libtorch 2.11 with libtorch_cuda.so, which multir dlopens.
export LD_LIBRARY_PATH=$torch_lib:${LD_LIBRARY_PATH:-}
work=${WORK:-/tmp/multir-gpu}
mkdir -p "$work"
stage() { echo "== $* ($(date +%T))"; }

do_train() {
  stage "phantoms"
  [[ -f $work/train/manifest.csv ]] || "$BIN" -q synth --out "$work/train" --scans "${TRAIN_SCANS:-120}" --seed 1000
  stage "train"
  local resume=()
  [[ -n ${RESUME:-} ]] && resume=(--resume "$RESUME")
  "$BIN" train --manifest "$work/train/manifest.csv" --out "$OUT/run" --model small \
    --alpha 0.5 --beta 0.5 --lr 1e-3 --batch "${TRAIN_BATCH:-12}" --steps "${TRAIN_STEPS:-20000}" --eval-every 250 --folds 6 --patience 3 --early-stop 8 \
    --max-minutes "${TRAIN_MINUTES:-3.5}" --device cuda "${resume[@]}" > "$OUT/train_summary.json"
  cat "$OUT/train_summary.json"
}

do_eval() {
  local ck=${CHECKPOINT:-$OUT/run/best.safetensors}
  [[ -f $work/test/manifest.csv ]] || "$BIN" -q synth --out "$work/test" --scans "${TEST_SCANS:-60}" --seed 7777
  stage "evaluate fp32 (unseen seed 7777)"
  "$BIN" evaluate --manifest "$work/test/manifest.csv" --checkpoint "$ck" --out "$work/eval_fp32" --device cuda --window-batch 16
  cp "$work/eval_fp32/evaluation.json" "$OUT/eval_fp32.json"
  stage "evaluate fp16 autocast (first 21 scans)"
  head -22 "$work/test/manifest.csv" > "$work/test/first21.csv"
  "$BIN" evaluate --manifest "$work/test/first21.csv" --checkpoint "$ck" --out "$work/eval_fp16" --device cuda --window-batch 16 --mixed-precision 2> >(grep -v autocast_mode.h >&2)
  cp "$work/eval_fp16/evaluation.json" "$OUT/eval_fp16.json"
}

do_bench() {
  stage "benchmarks: tch (multir bench-model) vs PyTorch eager, same card"
  for model in paper small; do
    for prec in fp32 fp16; do
      local flag=() pflag=()
      [[ $prec == fp16 ]] && flag=(--mixed-precision) && pflag=(--fp16)
      "$BIN" -q bench-model --model $model --batch 16 --passes 20 --device cuda "${flag[@]}" | tee -a "$OUT/bench.jsonl"
      "$PY" "$repo/bench/model/reference.py" --model $model --batch 16 --passes 20 --device cuda "${pflag[@]}" | tee -a "$OUT/bench.jsonl"
    done
    "$BIN" -q bench-model --model $model --batch 4 --passes 10 --device cuda --train-step | tee -a "$OUT/bench.jsonl"
    "$PY" "$repo/bench/model/reference.py" --model $model --batch 4 --passes 10 --device cuda --train-step | tee -a "$OUT/bench.jsonl"
  done
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "${@:-all}"; do
  case $what in
    train) do_train ;;
    eval) do_eval ;;
    bench) do_bench ;;
    all) do_train; do_eval; do_bench ;;
    *) echo "unknown stage $what" >&2; exit 2 ;;
  esac
done
stage "done"
