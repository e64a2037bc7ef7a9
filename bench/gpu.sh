#!/usr/bin/env bash
# The GPU measurements, for a lent GPU machine (python3 there has torch, not Ray); under 10 minutes on an H100/H200.
#
#   bash bench/gpu.sh                  # from the repo root, with $OUT set and .gpu/ carried: peak, input, tta, ema
#   bash bench/gpu.sh throughput       # or any of: peak input tta ema throughput top
#
#   peak        bench/gpu_peak.py: peak training img/s of the default CNN-LSTM (data on the GPU, bf16, channels_last;
#               eager, torch.compile, CUDA graphs; batch 512 to 8192)
#   input       bench/time_to_accuracy.py input --gpu: lstmclf's batches drawn on the GPU, their share of an epoch
#   tta         bench/time_to_accuracy.py --gpu --sides lstmclf: recipes/gpu.yaml through jobs/train.py (1 GPU
#               worker), epochs and seconds of epochs to 99.5% test accuracy
#   ema         bench/investigations/ema_cost.py --gpu: a training step without a weight average, with
#               engine.WeightAverage and with the AveragedModel one it replaced (a host sync per step)
#   throughput  bench/train_throughput.py --gpu: Ray Train against plain PyTorch (BENCH_REPS, BENCH_EPOCHS,
#               BENCH_ACC_EPOCHS; defaults 3, 3, 5)
#   top         jobs/compare.py --config recipes/top.yaml: issue 16's candidates for 99.70%, 3 models x 3 seeds x
#               30 epochs, all 9 at once on a tenth of the GPU each; a call of its own (not yet run: its length
#               is a guess, 5-8 minutes). Run again on a warm machine, it resumes the comparison.
# Each under `timeout`; back in $OUT: gpu.log (everything), one JSON per measurement, ray-logs.tgz.
#
# .gpu/ (ignored): mnist/, the four MNIST files, and site.tar.xz, a Python 3.12 site-packages with Ray 2.58
# and what that machine lacks; `bash bench/gpu_prepare.sh` builds it here, from the package registry.

set -u -o pipefail
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
SITE=/tmp/site
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
STEPS=${*:-peak input tta ema}

banner() { printf '\n===== [%4ds] %s\n' "$SECONDS" "$*"; }

step() {  # step NAME SECONDS COMMAND...: run it under a timeout; a failure is reported, the next step still runs
    local name=$1 t=$2 rc
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    banner "$name: $*"
    timeout -k 10 "$t" "$@"
    rc=$?
    echo "$name exit $rc"
    if ((rc != 0)); then  # a step killed by its timeout can leave Ray's daemons behind
        timeout -k 5 30 python3 -c 'import sys; from ray.scripts.scripts import main
sys.argv = ["ray", "stop", "--force"]; main()' >/dev/null 2>&1
        return 1
    fi
}

main() {
    local failed=0
    banner "machine"
    nvidia-smi || echo "nvidia-smi failed"
    nproc && free -g | head -2
    python3 -c 'import sys, torch; print(sys.version, "torch", torch.__version__, "cuda", torch.version.cuda)'
    if [[ ! -f .gpu/site.tar.xz || ! -d .gpu/mnist ]]; then
        echo "FATAL: .gpu/site.tar.xz or .gpu/mnist missing: name .gpu in the run's carry"
        return 2
    fi
    mkdir -p "$SITE" && timeout -k 5 120 tar -xJf .gpu/site.tar.xz -C "$SITE" || { echo "FATAL: unpack"; return 2; }
    export PYTHONPATH=$PWD:$SITE
    # nothing below runs without these
    timeout -k 5 150 python3 -c 'import ray, ray.train.torch, torch, lstmclf.training
assert ray.__file__.startswith("/tmp/site/"), ray.__file__
assert torch.cuda.is_available(), "no CUDA device"
print("ray", ray.__version__, "from", ray.__file__, "on", torch.cuda.get_device_name(0))' || { echo "FATAL: imports"; return 3; }

    step peak 180 python3 bench/gpu_peak.py --data .gpu/mnist --out "$OUT/gpu-peak.json" || failed=1
    step input 90 python3 bench/time_to_accuracy.py input --gpu --data .gpu/mnist --config recipes/gpu.yaml \
        --reps 3 --out "$OUT/input-gpu.json" || failed=1
    step tta 210 python3 bench/time_to_accuracy.py --gpu --sides lstmclf --config recipes/gpu.yaml --target 0.995 \
        --data .gpu/mnist --reps 1 --out "$OUT/time-to-accuracy-gpu.json" || failed=1
    step ema 90 python3 bench/investigations/ema_cost.py --gpu --data .gpu/mnist --reps 5 --steps 200 \
        --out "$OUT/ema-cost-gpu.json" || failed=1
    step throughput 420 python3 bench/train_throughput.py --gpu --data .gpu/mnist --reps "${BENCH_REPS:-3}" \
        --epochs "${BENCH_EPOCHS:-3}" --accuracy-epochs "${BENCH_ACC_EPOCHS:-5}" --out "$OUT/throughput-gpu.json" || failed=1
    local top=/tmp/lstmclf-top resume=()
    [[ -d $top/top ]] && resume=(--resume)
    step top 480 python3 jobs/compare.py --config recipes/top.yaml --data .gpu/mnist --gpus-per-worker 0.1 \
        --storage "$top" --name top "${resume[@]}" || failed=1
    if [[ -d $top/top ]]; then  # the outcome and every epoch's metrics, not the checkpoints
        (cd "$top/top" && tar -czf "$OUT/top.tgz" --exclude=trials ./*) || failed=1
    fi
    banner "done: $( ((failed)) && echo "with failures" || echo ok )"
    return "$failed"
}

main 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
logs=$(cd /tmp/ray 2>/dev/null && ls -d session_2*/logs 2>/dev/null)  # Ray's own logs, if they fit
if [[ -n $logs ]]; then
    # shellcheck disable=SC2086  # one word per session folder
    tar -czf "$OUT/ray-logs.tgz" -C /tmp/ray $logs 2>/dev/null
    [[ $(stat -c %s "$OUT/ray-logs.tgz" 2>/dev/null || echo 0) -gt 15000000 ]] && rm -f "$OUT/ray-logs.tgz"
fi
ls -l "$OUT" | tee -a "$OUT/gpu.log"
exit "$status"
