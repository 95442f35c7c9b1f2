#!/usr/bin/env bash
# The GPU measurements of issue 21 in one device call, in priority order, each under a deadline:
#   1. benchmarks/gpu_diffusion.py: DDP and ZeRO-2 rows, eager and compiled, at 64 and 128 px, the plain
#      compiled step beside them, and a profile of each row (host vs device time);
#   2. a whole run on one GPU: configs/synthetic.yaml (smaller corpus and step budget), trained by
#      `deepspeed --num_gpus 1 launchers/train.py` with the real loader and its workers, evaluated by
#      `accelerate launch launchers/evaluate.py`, summarised into gpu_run.json + the sample grid;
#   3. the loader tests under CUDA (the pinned-memory release path) and the loader benchmark on the host's cores.
# Writes into $OUT (default runs/gpu_out): gpu_diffusion.json/.png, gpu_run.json, gpu_run_grid.png,
# loader_throughput.json, logs.tar.gz: at most 8 files, as the device tool brings back.
#
#   bash benchmarks/gpu/fetch_wheels.sh              # once, where PyPI is reachable (not on the device)
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=600)
#   PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh --smoke   # the same plumbing on a CPU, every step shrunk (~2 min)
# Options: --budget SECONDS (default 540: the device call's 600 s less start-up), --smoke.
set -uo pipefail
cd "$(dirname "$0")/../.."
BUDGET=540
SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --budget) BUDGET="$2"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        *) echo "run.sh: unknown option $1 (--budget SECONDS, --smoke)" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-runs/gpu_out}"
WORK="${WORK:-runs/gpu_work}"
mkdir -p "$OUT" "$WORK/logs"
LOGS="$WORK/logs"
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
note() { echo "[run.sh $(( $(date +%s) - START ))s] $*" | tee -a "$LOGS/run.log"; }
# `step NAME SECONDS CMD...`: CMD under a deadline of SECONDS (or what is left, if less); skipped below 30 s
step() {
    local name="$1" want="$2"; shift 2
    local budget; budget=$(left)
    [ "$want" -lt "$budget" ] && budget="$want"
    if [ "$budget" -lt 30 ]; then note "$name: skipped, $(left) s left"; return 1; fi
    note "$name: up to ${budget}s: $*"
    timeout --kill-after=10 "$budget" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    note "$name: exit $rc ($(tail -n 1 "$LOGS/$name.log" | cut -c1-160))"
    return $rc
}

PY="${PYTHON:-python3}"
# the carried wheels are for the device image (CPython 3.12); a smoke run uses what is installed
if [ "$SMOKE" = 0 ] && ls benchmarks/gpu/wheels/*.whl > /dev/null 2>&1; then
    note "installing the carried wheels"
    "$PY" -m pip install --quiet --no-index --no-deps --find-links benchmarks/gpu/wheels benchmarks/gpu/wheels/*.whl \
        >> "$LOGS/install.log" 2>&1 || note "wheel install failed: see install.log"
else
    note "no carried wheels installed (none in benchmarks/gpu/wheels, or --smoke): using the installed packages"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BIN="$(dirname "$(command -v "$PY")")"
DEEPSPEED=("$PY" -m deepspeed.launcher.runner)
ACCELERATE=("$PY" -m accelerate.commands.launch)
"$PY" - > "$LOGS/environment.log" 2>&1 <<'PY'
import torch, importlib.metadata as md
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for name in ("deepspeed", "diffusers", "accelerate", "braindecode", "webdataset", "torch-fidelity"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
PY
note "$(tr '\n' ' ' < "$LOGS/environment.log")"

# 1. the diffusion step: engines and compile at both sizes, with a profile of each row
if [ "$SMOKE" = 1 ]; then
    step gpu_diffusion 240 "$PY" benchmarks/gpu_diffusion.py --quick --out "$OUT"
else
    step gpu_diffusion 300 "$PY" benchmarks/gpu_diffusion.py --out "$OUT" --sizes 64 128 --sections engine,compile \
        --engines ddp,zero2 --compile-engines ddp,zero2 --profile 5 --time-budget-s 270
fi

# 2. a whole run on one GPU (CPU smoke: the tests' tiny config on one rank)
if [ "$SMOKE" = 1 ]; then
    CONFIG=tests/configs/tiny_train.yaml
    SIZE=(synth.num_samples=96 "train.teacher.steps=2" "train.lowlevel.steps=2" "train.highlevel.steps=2"
          "train.diffusion.steps=2" "train.checkpoint_every=2" "train.log_every=1" "model.diffusion.sample_steps=2"
          "eval.max_trials=8")
else
    CONFIG=configs/synthetic.yaml
    SIZE=(synth.num_samples=6000 synth.workers=8 "train.teacher.steps=150" "train.lowlevel.steps=200"
          "train.highlevel.steps=200" "train.diffusion.steps=1500" "train.checkpoint_every=500" "train.log_every=25"
          "eval.max_trials=512")
fi
RUN=(run_dir="$WORK/run" data.root="$WORK/corpus" eval.inception_metrics=false "${SIZE[@]}")
if step synth 120 "$PY" -m eeg2im_scale.cli.main stream --config "$CONFIG" "${RUN[@]}" \
   && step train 300 "${DEEPSPEED[@]}" --num_gpus 1 --master_port 29531 launchers/train.py --config "$CONFIG" "${RUN[@]}" \
   && step evaluate 120 "${ACCELERATE[@]}" --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
        $( [ "$SMOKE" = 1 ] && echo --cpu ) launchers/evaluate.py --config "$CONFIG" "${RUN[@]}"; then
    :
fi
"$PY" benchmarks/gpu/summarize_run.py "$WORK/run" --config "$CONFIG" --out "$OUT/gpu_run.json" "${RUN[@]}" \
    >> "$LOGS/summarize.log" 2>&1 || note "summarize_run failed: see summarize.log"
[ -f "$WORK/run/eval/grid.png" ] && cp "$WORK/run/eval/grid.png" "$OUT/gpu_run_grid.png"

# 3. the loader under CUDA, then its benchmark on the host's cores
if [ "$SMOKE" = 0 ]; then
    step loader_tests 90 "$PY" -m pytest -q -x tests/test_loader.py
    step loader_bench 120 "$PY" benchmarks/loader_throughput.py --out "$OUT/loader_throughput.json" \
        --work-dir "$WORK/loader" --sizes 6000 --workers 0,4,8
fi

tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs $(cd "$WORK" && ls run/stages/*/stats.jsonl run/eval/metrics.json 2>/dev/null)
note "done; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
cat "$LOGS/run.log"
