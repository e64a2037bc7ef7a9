#!/usr/bin/env bash
# One measurement of the GPU training path on a lent GPU machine (python3 there has torch, not Ray).
#
#   bash bench/gpu.sh          # from the repo root, with $OUT set; the folder .gpu/ carried beside the tree
#
# .gpu/ (ignored, built by hand): site.tar.xz, a Python 3.12 site-packages with Ray 2.58 (Java, RLlib, Serve
# and LLM stripped) and every dependency of ray[default,train,tune] that machine lacks; mnist/, the four
# MNIST files. Steps, each under `timeout` and inside one time budget (GPU_SH_BUDGET seconds, default 450):
#   1. the machine: nvidia-smi, python, torch, versions of the packages Ray leans on
#   2. unpack the site, check that Ray, Ray Train/Tune, the dashboard's deps and lstmclf.training import and
#      that CUDA works (stops here on failure: nothing after it could run)
#   3. sanity run: jobs/train.py, 1 GPU worker, full MNIST, 2 epochs
#   4. bench/train_throughput.py --gpu, sized to the time left (from the sanity run's epoch time);
#      BENCH_REPS / BENCH_EPOCHS / BENCH_ACC_EPOCHS / BENCH_CPUS force the sizes
# Back in $OUT: gpu.log (everything), throughput-gpu.json, sanity-summary.json, ray-logs.tgz.
#
# How .gpu/ was made (here, x86-64; echo /.gpu/ >> .git/info/exclude):
#   pip install --dry-run --ignore-installed --report r.json --python-version 3.12 --only-binary=:all:
#     --platform manylinux_2_28_x86_64 ... --target /tmp/x "ray[default,train,tune]==2.58.0" torchmetrics pyarrow pyyaml
#   minus what that machine already has (its image's torch, numpy, etc.; Torch's CUDA wheels dropped), plus, overriding its copies,
#   typing_extensions 4.16 (pydantic 2.14 needs it), protobuf 7.36 (the google/opentelemetry protos' runtime)
#   and aiohttp 3.14 with multidict/yarl/propcache/frozenlist/aiosignal/aiohappyeyeballs (ray[default] needs
#   >= 3.14.1): the versions of .venv; `pip download --no-deps` each, `python3.12 -m pip install --no-deps
#   --no-compile --target SITE` them with the Ray wheel; rm -r SITE/bin SITE/ray/{jars,rllib,serve,llm}
#   SITE/virtualenv/seed/wheels/embed/*.whl, the dashboard's *.map; tar -C SITE -cf - . | xz -9e > .gpu/site.tar.xz

set -u -o pipefail
: "${OUT:?set OUT to the folder whose files come back}"
mkdir -p "$OUT"
BUDGET=${GPU_SH_BUDGET:-450}
SITE=/tmp/site
RUNS=/tmp/gpu-runs
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0

left() { echo $((BUDGET - SECONDS)); }

# timeout for a step: at most $1 seconds, and never past the budget less $2 seconds kept for what follows
cap() {
    local t=$(($(left) - $2))
    ((t > $1)) && t=$1
    ((t < 10)) && t=10
    echo "$t"
}

banner() { printf '\n===== [%4ds] %s\n' "$SECONDS" "$*"; }

ray_stop() {  # a step killed by its timeout can leave Ray's daemons behind
    timeout -k 5 30 python3 -c 'import sys; from ray.scripts.scripts import main
sys.argv = ["ray", "stop", "--force"]; main()' >/dev/null 2>&1 || true
}

main() {
    local failed=0 t rc
    banner "machine"
    nvidia-smi || echo "nvidia-smi failed"
    uname -a
    nproc
    free -g | head -2
    df -h /tmp /dev/shm 2>/dev/null
    command -v python3
    python3 -c 'import sys, torch; print(sys.version); cuda = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, cuda, torch.cuda.get_device_name(0) if cuda else "")'
    # the machine's own copies of what Ray and lstmclf use (the site overrides some of them)
    local pkgs='torch|torchmetrics|torchvision|numpy|pandas|pyarrow|protobuf|grpcio|aiohttp|typing.extensions'
    pkgs+='|pydantic|packaging|click|msgpack|pyyaml|filelock|requests|prometheus.client|psutil|fsspec|jsonschema'
    python3 -m pip list 2>/dev/null | grep -i -E "^($pkgs|opentelemetry.*|opencensus) "

    banner "unpack .gpu/site.tar.xz"
    if [[ ! -f .gpu/site.tar.xz || ! -d .gpu/mnist ]]; then
        echo "FATAL: .gpu/site.tar.xz or .gpu/mnist missing: name .gpu in the run's carry"
        return 2
    fi
    if ! { mkdir -p "$SITE" && timeout -k 5 "$(cap 120 300)" tar -xJf .gpu/site.tar.xz -C "$SITE"; }; then
        echo "FATAL: could not unpack the site"
        return 2
    fi
    export PYTHONPATH=$PWD:$SITE
    du -sh "$SITE"
    ls -l "$SITE/ray/core/src/ray/gcs/gcs_server" "$SITE/ray/core/src/ray/raylet/raylet"

    banner "import check"
    timeout -k 5 "$(cap 150 240)" python3 - <<'EOF'
import importlib
import sys
import time
import traceback

# Every import is tried, so one run shows every missing piece; the Torch-free ones first.
t0, failed = time.perf_counter(), []
for name in ("ray", "ray.train", "ray.tune", "ray.dashboard.optional_deps", "ray.util.state", "pydantic",
             "google.protobuf", "google.api_core", "grpc", "aiohttp", "aiohttp_cors", "typing_extensions",
             "jsonschema", "opencensus", "opentelemetry.sdk", "opentelemetry.exporter.prometheus", "pyarrow",
             "torch", "torchmetrics", "ray.train.torch", "lstmclf.training"):
    try:
        m = importlib.import_module(name)
    except Exception:
        failed.append(name)
        print(f"{name:34s} FAILED:")
        traceback.print_exc(limit=-3, file=sys.stdout)
        continue
    print(f"{name:34s} {getattr(m, '__version__', ''):14s} {getattr(m, '__file__', None)}")
print(f"imports took {time.perf_counter() - t0:.1f}s")
try:  # not needed below, and under edit elsewhere: a failure here is reported, not fatal
    importlib.import_module("lstmclf.tuning")
    print("lstmclf.tuning imports")
except Exception as e:
    print(f"WARNING: lstmclf.tuning does not import: {type(e).__name__}: {e}")
if failed:
    sys.exit(f"FATAL: cannot import {', '.join(failed)}")
import ray

if not ray.__file__.startswith("/tmp/site/"):
    sys.exit(f"FATAL: ray comes from {ray.__file__}, not the carried site")
import torch

from lstmclf.engine import autocast, place_model

if not torch.cuda.is_available():
    sys.exit("FATAL: torch sees no CUDA device")
dev = torch.device("cuda")
print("device", torch.cuda.get_device_name(0), "cudnn", torch.backends.cudnn.version())
from lstmclf.config import ModelConfig
from lstmclf.models import build_model

model = place_model(build_model(ModelConfig(), 10, (1, 28, 28)), dev)  # the default recipe's model
seen = {}
model.head.encoders["rows"].lstm.register_forward_hook(lambda m, i, o: seen.update(dtype=o[0].dtype))
with autocast(dev):  # the train step's bf16 autocast
    logits = model(torch.randn(128, 1, 28, 28, device=dev).to(memory_format=torch.channels_last))
logits.float().sum().backward()
torch.cuda.synchronize()
print("model under bf16 autocast: logits", logits.dtype, "LSTM", seen["dtype"])
if seen["dtype"] != torch.float32:
    sys.exit(f"FATAL: the LSTM ran in {seen['dtype']} under autocast (fp32 expected)")
EOF
    rc=$?
    if ((rc != 0)); then
        echo "FATAL: import check failed (exit $rc); nothing after it can run"
        return 3
    fi

    banner "sanity: jobs/train.py, 1 GPU worker, full MNIST, 2 epochs"
    rm -rf "$RUNS"
    local t0=$SECONDS
    [[ -n ${SKIP_SANITY:-} ]] && echo "skipped (SKIP_SANITY)" || timeout -k 10 "$(cap 180 150)" python3 jobs/train.py --data .gpu/mnist --epochs 2 --workers 1 \
        --gpus-per-worker 1 --cpus-per-worker 2 --storage "$RUNS" --name sanity
    rc=$?
    local sanity_s=$((SECONDS - t0))
    echo "sanity exit $rc after ${sanity_s}s"
    ((rc != 0)) && failed=1 && ray_stop
    cp "$RUNS/sanity/summary.json" "$OUT/sanity-summary.json" 2>/dev/null
    cat "$RUNS"/sanity/epoch_*/metrics.json 2>/dev/null && echo

    banner "size the benchmark to the $(left)s left"
    local sizes
    sizes=$(python3 - "$RUNS/sanity" "$sanity_s" "$(left)" <<'EOF'
import json
import sys
from pathlib import Path

run, wall, left = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
epochs = [json.loads(p.read_text()) for p in sorted(run.glob("epoch_*/metrics.json"))]
if len(epochs) == 2:
    e = max(epochs[1]["epoch_s"], 0.5)  # train + validation of one warm epoch
    o = max(wall - sum(m["epoch_s"] for m in epochs), 10.0)  # one Ray run's fixed cost (start, test set, stop)
else:  # no epoch time: guess one slow epoch, and keep the run small
    e, o = 8.0, 40.0
room = left - 60  # kept for the logs and the margin


def cost(reps, ep, acc):  # plain epochs cost about a Ray epoch; each Ray run adds o
    return reps * (2 * ep * e + o) + acc * e + o + 15


for reps, ep, acc in ((3, 3, 6), (2, 3, 6), (2, 2, 6), (1, 3, 6), (1, 2, 6), (1, 2, 4), (1, 2, 2)):
    if cost(reps, ep, acc) <= room:
        break
print(reps, ep, acc, round(e, 1), round(o, 1), round(cost(reps, ep, acc)))
EOF
    ) || sizes="1 2 4 ? ? ?"
    local reps epochs acc est_e est_o est
    read -r reps epochs acc est_e est_o est <<<"$sizes"
    reps=${BENCH_REPS:-$reps} epochs=${BENCH_EPOCHS:-$epochs} acc=${BENCH_ACC_EPOCHS:-$acc}
    echo "epoch ~${est_e}s, Ray run overhead ~${est_o}s: reps $reps, epochs $epochs, accuracy epochs $acc (~${est}s)"

    banner "bench/train_throughput.py --gpu"
    t=$(cap 420 20)
    if ((t < 30)); then
        echo "skipped: only ${t}s left"
        failed=1
    else
        timeout -k 10 "$t" python3 bench/train_throughput.py --gpu --data .gpu/mnist --reps "$reps" \
            --epochs "$epochs" --accuracy-epochs "$acc" --cpus "${BENCH_CPUS:-2}" --out "$OUT/throughput-gpu.json"
        rc=$?
        echo "bench exit $rc"
        ((rc != 0)) && failed=1 && ray_stop
    fi

    banner "done: $( ((failed)) && echo "with failures" || echo ok )"
    return "$failed"
}

main 2>&1 | tee "$OUT/gpu.log"
status=${PIPESTATUS[0]}
# Ray's own logs (every session of this run), if they fit in what comes back.
logs=$(cd /tmp/ray 2>/dev/null && ls -d session_2*/logs 2>/dev/null)
if [[ -n $logs ]]; then
    # shellcheck disable=SC2086  # one word per session folder
    tar -czf "$OUT/ray-logs.tgz" -C /tmp/ray $logs 2>/dev/null
    if [[ -f $OUT/ray-logs.tgz && $(stat -c %s "$OUT/ray-logs.tgz") -gt 15000000 ]]; then
        rm -f "$OUT/ray-logs.tgz"
        echo "ray-logs.tgz over 15 MB: left out" | tee -a "$OUT/gpu.log"
    fi
fi
ls -l "$OUT" | tee -a "$OUT/gpu.log"
exit "$status"
