#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine with a `multir` binary built on a
# CPU machine (see README, "GPU"). It trains the shipped small model on
# phantoms generated on the spot, evaluates it on a cohort from an unseen
# seed (fp32 and fp16 autocast), and benchmarks the network through tch
# against the same network in PyTorch eager (bench/model/reference.py) on the
# same card, one after the other.
#
#   BIN=path/to/multir OUT=results bench/gpu/run.sh [train|eval|bench|sweep|throughput|all]...
#
# Knobs: TRAIN_SCANS (120), TEST_SCANS (60), TRAIN_STEPS (20000),
# TRAIN_MINUTES (3.5), TRAIN_BATCH (12), RESUME (a last.safetensors to continue from),
# TRAIN_LR (1e-3), EVAL_EVERY (250), INIT (weights to fine-tune), TRAIN_ARGS (more
# `multir train` flags, e.g. --spacing, --patch, --jitter),
# LOSS_ARGS (segmentation targets and loss of train and sweep; default
# "--soft-masks --bce 1", how the shipped model's stage 2 trained; empty: the
# paper's thresholded masks and Focal Tversky alone),
# CHECKPOINT (model to evaluate; default: the one just trained), TRAIN_SEED
# (seed of the training cohort, 1000), SWEEP (see do_sweep), SWEEP_EVAL (0:
# return the sweep's best and last checkpoints and evaluate them elsewhere,
# which leaves the card's time to training).
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
# Segmentation targets and loss flags of every training stage (LOSS_ARGS=
# for the paper's thresholded masks), word-split where they are used.
loss_args=${LOSS_ARGS---soft-masks --bce 1}
# The cohorts, each generated once per machine: training (seed 1000), the
# selection cohort that chooses between models (5555) and the unseen test
# cohort the model card reports (7777).
cohort() {
  local name=$1 scans seed
  case $name in
    train) scans=${TRAIN_SCANS:-120} seed=${TRAIN_SEED:-1000} ;;
    select) scans=${SELECT_SCANS:-30} seed=5555 ;;
    test) scans=${TEST_SCANS:-60} seed=7777 ;;
  esac
  [[ -f $work/$name/manifest.csv ]] || "$BIN" -q synth --out "$work/$name" --scans "$scans" --seed "$seed"
}

do_train() {
  stage "phantoms"
  cohort train
  stage "train"
  local resume=()
  [[ -n ${RESUME:-} ]] && resume=(--resume "$RESUME")
  [[ -n ${INIT:-} ]] && resume=(--init "$INIT")
  # shellcheck disable=SC2206 # both are lists of flags
  local extra=($loss_args ${TRAIN_ARGS:-})
  "$BIN" train --manifest "$work/train/manifest.csv" --out "$OUT/run" --model small \
    --alpha 0.5 --beta 0.5 --lr "${TRAIN_LR:-1e-3}" --batch "${TRAIN_BATCH:-12}" --steps "${TRAIN_STEPS:-20000}" --eval-every "${EVAL_EVERY:-250}" --folds 6 --patience 3 --early-stop 8 \
    --max-minutes "${TRAIN_MINUTES:-3.5}" --device "${DEVICE:-cuda}" "${resume[@]}" "${extra[@]}" > "$OUT/train_summary.json"
  cat "$OUT/train_summary.json"
}

do_eval() {
  local ck=${CHECKPOINT:-$OUT/run/best.safetensors}
  cohort test
  stage "evaluate fp32 (unseen seed 7777)"
  "$BIN" evaluate --manifest "$work/test/manifest.csv" --checkpoint "$ck" --out "$work/eval_fp32" --device cuda --window-batch 16
  cp "$work/eval_fp32/cohort.json" "$OUT/eval_fp32.json"
  stage "evaluate fp16 autocast (first 21 scans)"
  head -22 "$work/test/manifest.csv" > "$work/test/first21.csv"
  "$BIN" evaluate --manifest "$work/test/first21.csv" --checkpoint "$ck" --out "$work/eval_fp16" --device cuda --window-batch 16 --mixed-precision 2> >(grep -v autocast_mode.h >&2)
  cp "$work/eval_fp16/cohort.json" "$OUT/eval_fp16.json"
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

# Several training configurations side by side on the one card (each is
# launch-bound, so they share it well), each evaluated on a selection cohort
# (seed 5555) used to choose between them and on the unseen test cohort
# (seed 7777) that the model card reports. SWEEP lists name:spacing:patch:
# iterations:batch entries; INIT, TRAIN_LR and TRAIN_ARGS apply to each.
do_sweep() {
  stage "phantoms"
  cohort train
  [[ ${SWEEP_EVAL:-1} == 0 ]] || { cohort select && cohort test; }
  local entries=(${SWEEP:-a:3.2,3.2,5.0:48,48,16:0:32 b:3.2,3.2,5.0:64,64,32:1:16 c:2.4,2.4,3.5:64,64,32:0:16 d:2.0,2.0,3.0:80,80,32:0:12})
  local threads=$(( $(nproc) / ${#entries[@]} ))
  # shellcheck disable=SC2206 # lists of flags
  local loss=($loss_args) extra=(${TRAIN_ARGS:-})
  [[ -n ${INIT:-} ]] && extra+=(--init "$INIT")
  stage "train ${#entries[@]} configurations, ${TRAIN_MINUTES:-3.5} min each, $threads threads each"
  for e in "${entries[@]}"; do
    IFS=: read -r name spacing patch iters batch <<<"$e"
    mkdir -p "$work/sweep"
    "$BIN" -q train --manifest "$work/train/manifest.csv" --out "$work/sweep/$name" --model small \
      --spacing "$spacing" --patch "$patch" --iterations "$iters" --batch "$batch" \
      --alpha 0.5 --beta 0.5 --lr "${TRAIN_LR:-1e-3}" --steps "${TRAIN_STEPS:-100000}" --eval-every "${EVAL_EVERY:-500}" \
      --folds 6 --patience 3 --early-stop 8 --max-minutes "${TRAIN_MINUTES:-3.5}" --threads "$threads" \
      --device "${DEVICE:-cuda}" "${loss[@]}" "${extra[@]}" > "$work/sweep/$name.train.json" 2> "$work/sweep/$name.train.log" &
  done
  wait
  local evaluate=${SWEEP_EVAL:-1}
  for e in "${entries[@]}"; do
    IFS=: read -r name _ <<<"$e"
    if [[ $evaluate == 0 ]]; then
      cp "$work/sweep/$name/best.safetensors" "$OUT/$name.best.safetensors"
      cp "$work/sweep/$name/last.safetensors" "$OUT/$name.last.safetensors"
      continue
    fi
    cp "$work/sweep/$name/best.safetensors" "$OUT/$name.safetensors"
    # One evaluation at a time: eight at once oversubscribed the 16 cores
    # (each reads, resamples and restores on the CPU) and did not finish in
    # three minutes on an H200 machine.
    stage "evaluate $name on the selection (5555) and test (7777) cohorts"
    for cohort in select test; do
      "$BIN" -q evaluate --manifest "$work/$cohort/manifest.csv" --checkpoint "$OUT/$name.safetensors" \
        --out "$work/sweep/$name-$cohort" --device "${DEVICE:-cuda}" --window-batch 16 > /dev/null 2>&1
    done
  done
  for e in "${entries[@]}"; do
    IFS=: read -r name _ <<<"$e"
    for cohort in select test; do
      [[ $evaluate == 0 ]] && break
      "$PY" - "$name" "$cohort" "$work/sweep/$name-$cohort/cohort.json" <<'PYEOF'
import json, sys
name, cohort, path = sys.argv[1:]
try:
    e = json.load(open(path))
except Exception as err:
    print(name, cohort, "no evaluation:", err); sys.exit()
c, g = e["classification"], e["segmentation"]
print(f"{name} {cohort}: accuracy {c['accuracy']:.3f} macro_f1 {c['macro_f1']:.3f} dice {g['mean_dice']:.3f} "
      f"surface_dice {g['mean_surface_dice']:.3f} assd {g['mean_assd_mm']:.2f} mm "
      f"fp {g['mean_false_positive_ml_on_lesion_free_scans']:.1f} mL {e['seconds']['mean_per_scan']:.2f} s/scan")
PYEOF
    done
    tail -c 600 "$work/sweep/$name.train.json"; echo
  done | tee "$OUT/sweep_summary.txt"
  tar -C "$work/sweep" -czf "$OUT/sweep_files.tar.gz" --exclude='*.safetensors' --exclude='*.nii.gz' .
}

# Scans per hour on one GPU at real scan size (512 x 512 x 300 int16
# .nii.gz), `multir run` against the serial Python pipeline
# (bench/gpu/pipeline_reference.py: nibabel, GPU resampling, the same network
# in PyTorch eager with bf16, nibabel save), one after the other on the same
# card and the same files, with the GPU's utilisation sampled by nvidia-smi
# every 200 ms. SCANS (40), READ_AHEAD (scans decoded ahead of the network,
# 4), READERS and FINISHERS (threads per stage; default one per four CPUs),
# WINDOW_BATCH (16). The goal: at least 5 000 scans per hour.
gpu_sampler() { nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$1" & echo $!; }
mean_util() { awk '{s+=$1; n++} END {if (n) printf "%.1f", s/n; else print "null"}' "$1"; }
do_throughput() {
  local n=${SCANS:-40} big=$work/big
  stage "phantoms: $n real-size scans"
  mkdir -p "$big"
  if "$PY" -c 'import nibabel, numpy' 2>/dev/null; then
    seq 0 $((n - 1)) | xargs -P "$(nproc)" -I{} sh -c \
      "[ -f '$big/ct{}.nii.gz' ] || '$PY' '$repo/bench/make_big_ct.py' '$big/ct{}.nii.gz' --seed {} > /dev/null"
    { echo scan_id,image; for i in $(seq 0 $((n - 1))); do echo "ct$i,ct$i.nii.gz"; done; } > "$big/manifest.csv"
  else
    # No nibabel here: the phantom generator at about real size instead.
    [[ -f $big/manifest.csv ]] || "$BIN" -q synth --out "$big" --scans "$n" --seed 42 --scale 2.6
  fi
  du -sh "$big"
  stage "multir run --device cuda (read-ahead ${READ_AHEAD:-4})"
  local sampler t0 t1
  sampler=$(gpu_sampler "$work/util_multir.txt")
  t0=$(date +%s.%N)
  "$BIN" -q run --manifest "$big/manifest.csv" --out "$work/tp-run" --force --no-report --device cuda \
    --read-ahead "${READ_AHEAD:-4}" --window-batch "${WINDOW_BATCH:-16}" \
    ${READERS:+--readers "$READERS"} ${FINISHERS:+--finishers "$FINISHERS"} > "$work/tp-run.log" 2>&1
  local rc=$?
  t1=$(date +%s.%N)
  kill "$sampler" 2>/dev/null
  "$PY" - "$n" "$t0" "$t1" "$rc" "$(mean_util "$work/util_multir.txt")" "$work/tp-run/cohort.json" <<'PYEOF' | tee -a "$OUT/throughput.jsonl"
import json, sys
n, t0, t1, rc, util, cohort = sys.argv[1:]
wall = float(t1) - float(t0)
out = {"impl": "multir run", "scans": int(n), "exit": int(rc), "wall_s": round(wall, 2),
       "s_per_scan": round(wall / int(n), 3), "scans_per_hour": round(3600 * int(n) / wall, 1),
       "gpu_utilization_mean_pct": None if util == "null" else float(util)}
try:
    out["seconds"] = json.load(open(cohort)).get("seconds")
except Exception as err:
    out["cohort_json"] = str(err)
print(json.dumps(out))
PYEOF
  tail -n 3 "$work/tp-run.log"
  if "$PY" -c 'import nibabel, torch' 2>/dev/null; then
    stage "Python serial pipeline (bf16), same scans"
    sampler=$(gpu_sampler "$work/util_python.txt")
    "$PY" "$repo/bench/gpu/pipeline_reference.py" "$big"/*.nii.gz --out "$work/tp-python" --bf16 > "$work/tp-python.json"
    kill "$sampler" 2>/dev/null
    "$PY" - "$work/tp-python.json" "$(mean_util "$work/util_python.txt")" <<'PYEOF' | tee -a "$OUT/throughput.jsonl"
import json, sys
out = json.load(open(sys.argv[1]))
out["gpu_utilization_mean_pct"] = None if sys.argv[2] == "null" else float(sys.argv[2])
print(json.dumps(out))
PYEOF
  else
    echo "no nibabel/torch in $PY: the Python reference pipeline is skipped"
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for what in "${@:-all}"; do
  case $what in
    train) do_train ;;
    eval) do_eval ;;
    bench) do_bench ;;
    sweep) do_sweep ;;
    throughput) do_throughput ;;
    all) do_train; do_eval; do_bench ;;
    *) echo "unknown stage $what" >&2; exit 2 ;;
  esac
done
stage "done"
