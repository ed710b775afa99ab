#!/usr/bin/env bash
# Every GPU-only check of homellm in one run of at most 8 minutes, for a lent GPU machine
# (one H200, no network). Figures go under $OUT: summary.json (each step's exit code, time
# and figures, or its failure), session.log (the steps' output), bench.json, nvml.jsonl and
# train_gpu.json.
#
#   benchmarks/gpu_wheels.sh                 # here, with network: the wheels the GPU image lacks
#   OUT=/some/dir benchmarks/gpu_session.sh  # there (carry .gpu-wheels)
#   benchmarks/gpu_session.sh --cpu          # any machine: every step on CPU, tiny sizes
#
# Steps, each in its own time box (`timeout`); a failure is recorded and the next step runs:
#   setup       the carried wheels into /tmp/site (never torch); versions
#   model       a model folder built here: the 1.3B preset's shape, random weights (--cpu: demo)
#   up          `homellm up` of a stack file: transformers serve, device cuda, gpus [0]
#   client      the openai client through the gateway: one chat, one stream
#   bench       a short `homellm bench` against the gateway, with NVML sampled alongside
#   nvml        NVML readings against `nvidia-smi --query-gpu` taken at the same moment
#   calibrate   `homellm plan calibrate` from that bench result (engine transformers)
#   plan_serve  `homellm plan serve` for the same model folder on this GPU
#   train_gpu   benchmarks/train_gpu.py, a subset that fits the time left
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT=${OUT:-$ROOT/gpu-session-out}
BUDGET_S=${GPU_SESSION_BUDGET_S:-470}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/homellm-gpu-session.XXXXXX")
mkdir -p "$WORK/logs"
STEPS=$WORK/steps.jsonl
: >"$STEPS"
START=$(date +%s)
UP_PID=""
NVML_PID=""
export HOMELLM_HOME=$WORK/home PYTHONUNBUFFERED=1 COLUMNS=200 NO_COLOR=1

if [ "$MODE" = gpu ]; then
    PY=${PYTHON:-python3}
else
    PY=${PYTHON:-$(command -v python3)}
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
HELPER="$PY $ROOT/benchmarks/gpu_session.py"

stop_pid() {  # stop_pid PID: SIGINT to its process group, then SIGKILL after 20 s
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

finish() {
    stop_pid "$NVML_PID"
    stop_pid "$UP_PID"
    $HELPER summary --work "$WORK" --steps "$STEPS" --mode "$MODE" --out "$OUT/summary.json" \
        >>"$WORK/logs/summary.log" 2>&1
    for name in $(ls "$WORK/logs"); do
        echo "===== $name"
        tail -c 60000 "$WORK/logs/$name"
    done >"$OUT/session.log"
    [ -f "$WORK/bench/bench.json" ] && cp "$WORK/bench/bench.json" "$OUT/bench.json"
    [ -f "$WORK/nvml.jsonl" ] && cp "$WORK/nvml.jsonl" "$OUT/nvml.jsonl"
    train=$(ls "$WORK"/train/train_gpu-*.json 2>/dev/null | tail -n 1)
    [ -n "$train" ] && cp "$train" "$OUT/train_gpu.json"
    rm -rf "$WORK"
}
trap finish EXIT
trap 'exit 130' INT TERM

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

record() {  # record NAME RC SECONDS [NOTE]
    local note=${4:-}
    note=${note//\\/}
    note=${note//\"/\'}
    printf '{"name": "%s", "rc": %d, "seconds": %s, "note": "%s"}\n' \
        "$1" "$2" "$3" "$note" >>"$STEPS"
}

step() {  # step NAME MAX_SECONDS COMMAND...: time-boxed to MAX_SECONDS and the budget left
    local name=$1 max=$2
    shift 2
    local limit
    limit=$(left)
    [ "$limit" -gt "$max" ] && limit=$max
    if [ "$limit" -lt 5 ]; then
        record "$name" 124 0 "skipped: the session's time budget is spent"
        return 124
    fi
    local t0 rc
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >>"$WORK/logs/$name.log" 2>&1
    rc=$?
    local note=""
    [ "$rc" -eq 124 ] && note="timed out after ${limit} s"
    record "$name" "$rc" "$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}")" "$note"
    return "$rc"
}

setup() {
    echo "mode $MODE, python $PY"
    if [ "$MODE" = gpu ]; then
        # the image's torch stays; the wheels only add what it lacks (and our transformers)
        if ls "$ROOT"/.gpu-wheels/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target /tmp/site "$ROOT"/.gpu-wheels/*.whl || return 1
            export PYTHONPATH=$ROOT/src:/tmp/site
        else
            echo "no .gpu-wheels: run benchmarks/gpu_wheels.sh here and carry .gpu-wheels"
            return 1
        fi
        nvidia-smi || return 1
    fi
    "$PY" - <<'EOF'
import importlib.metadata as m, json, sys
names = ["torch", "transformers", "openai", "pydantic", "starlette", "fastapi", "uvicorn",
         "nvidia-ml-py", "homellm"]
found = {}
for n in names:
    try:
        found[n] = m.version(n)
    except m.PackageNotFoundError:
        found[n] = None
import torch, transformers
found["transformers_imported"] = transformers.__version__
found["cuda"] = torch.cuda.is_available()
found["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(json.dumps(found))
EOF
}

if [ "$MODE" = gpu ]; then
    PROMPT=512 CONCURRENCY=8 CONTEXT=4096
    SIZES=(--input-len $PROMPT --output-len 128 --concurrency $CONCURRENCY --num-requests 48
           --warmup 2)
    PLAN_GPU=(--gpus h200)
    TRAIN=(--device cuda --presets 350m,1.3b --long-presets 125m
           --contexts 32768,110592 --steps 12 --warmup 4 --mb 8)
    MAX_TOKENS=64
else
    PROMPT=16 CONCURRENCY=2 CONTEXT=2048     # the demo model's window
    SIZES=(--input-len $PROMPT --output-len 8 --concurrency $CONCURRENCY --num-requests 4)
    # the CPU described as a GPU spec: the logic runs, the figures mean nothing
    PLAN_GPU=(--gpu-spec mem=16,bw=20,bf16=0.5)
    TRAIN=(--device cpu --quick)
    MAX_TOKENS=8
fi

# the steps are exported so that `timeout` runs them in a child bash
export -f setup
export ROOT MODE PY WORK

step setup 90 bash -c setup
[ "$MODE" = gpu ] && [ -d /tmp/site ] && export PYTHONPATH=$ROOT/src:/tmp/site
HELPER="$PY $ROOT/benchmarks/gpu_session.py"
MODEL=$WORK/model
CPU_FLAG=()
[ "$MODE" = cpu ] && CPU_FLAG=(--cpu)
step model 120 $HELPER model --out "$MODEL" --json "$WORK/model.json" "${CPU_FLAG[@]}"

PORT=$($HELPER port)
URL=http://127.0.0.1:$PORT
$HELPER stack --model "$MODEL" --port "$PORT" --context "$CONTEXT" --out "$WORK/stack.yaml" \
    "${CPU_FLAG[@]}"
cp "$WORK/stack.yaml" "$WORK/logs/stack.yaml"
# its own process group, so that stopping it reaches the engine too
setsid "$PY" -m homellm.cli up --config "$WORK/stack.yaml" --run-dir "$WORK/run" \
    >>"$WORK/logs/up.log" 2>&1 &
UP_PID=$!
if step up 240 $HELPER ready --url "$URL/ready" --timeout 240 --pid "$UP_PID"; then
    step client 60 $HELPER client --url "$URL" --max-tokens "$MAX_TOKENS" \
        --json "$WORK/client.json"
    setsid $HELPER nvml --out "$WORK/nvml.jsonl" --interval 2 >>"$WORK/logs/nvml.log" 2>&1 &
    NVML_PID=$!
    step bench 120 "$PY" -m homellm.cli bench --url "$URL" --model bench \
        --tokenizer "$MODEL" --no-progress --out "$WORK/bench" "${SIZES[@]}"
    sleep 1
    stop_pid "$NVML_PID"
    wait "$NVML_PID" 2>/dev/null
    if [ -s "$WORK/nvml.jsonl" ]; then
        record nvml 0 0
    else
        record nvml 1 0 "no samples: $(tail -n 1 "$WORK/logs/nvml.log" 2>/dev/null | cut -c1-200)"
    fi
    NVML_PID=""
else
    record client 1 0 "skipped: up never became ready"
    record bench 1 0 "skipped: up never became ready"
    record nvml 1 0 "skipped: up never became ready"
fi
stop_pid "$UP_PID"
UP_PID=""

if [ -f "$WORK/bench/bench.json" ]; then
    step calibrate 60 bash -c "\"\$@\" > '$WORK/calibrate.json'" _ "$PY" -m homellm.cli plan \
        calibrate "$WORK/bench/bench.json" --model "$MODEL" "${PLAN_GPU[@]}" \
        --engine transformers --json
else
    record calibrate 1 0 "skipped: no bench result"
fi
step plan_serve 60 bash -c "\"\$@\" > '$WORK/plan_serve.json'" _ "$PY" -m homellm.cli plan \
    serve "$MODEL" "${PLAN_GPU[@]}" --context "$CONTEXT" --concurrency "$CONCURRENCY" \
    --prompt "$PROMPT" --json

step train_gpu 300 "$PY" "$ROOT/benchmarks/train_gpu.py" "${TRAIN[@]}" --out "$WORK/train"
exit 0
