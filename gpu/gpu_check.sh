#!/usr/bin/env bash
# The unattended GPU check: on one GPU, in under 10 minutes, it records 3-camera sim_transfer demos, trains the
# ResNet-18 policies with the GPU recipe (docs/training_at_scale.md), evaluates the longest run on held-out episodes
# and times IMF-1 against DDIM-10; OUT/gpu_check.json and OUT/gpu_check.md hold the numbers and the versions.
#
#   bash gpu/gpu_check.sh                        # GPU: about 9 minutes (BUDGET_S), results in runs/gpu_check
#   bash gpu/gpu_check.sh --out DIR --work DIR   # results to one dir, demos / checkpoints (GBs) / logs to another
#   bash gpu/gpu_check.sh --smoke --out DIR      # the same stages on CPU at toy sizes, about 2 minutes
#
# Stages: (1) where the machine lacks them, install the carried wheels (--wheels, default .gpu_wheels, made by
# gpu/gpu_wheels.sh) into a temporary site dir, and the GL loader libraries where ldconfig finds no libEGL;
# (2) versions and one rendered frame per camera and task; (3) record EPISODES demos on all cores; (4) throughput
# of IMF-AttnRes with the reference u-prediction and of the DDPM/DDIM transformer baseline, both with the reference
# 384 x 18 head, each for MEASURE_S seconds after its first logged steps (which hold the warm-up and compile) and
# stopped by MEASURE_CAP_S after its start in any case; (5) IMF-AttnRes with x-prediction (the parameterization that
# learns at this data size, docs/results.md) for the rest of the budget: train.max_steps from the u-run's measured
# rate, stopped by SIGTERM (which checkpoints) if it runs over; (6) its policy on EVAL_EPISODES held-out seeds;
# (7) IMF-1 vs DDIM-10 latency per action chunk from three cameras. A run stopped by SIGTERM exits 143 and is kept.
# Variables override the sizes below; TRAIN_FAST holds the precision and compile overrides of every training run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
OUT=runs/gpu_check
WORK=
WHEELS=.gpu_wheels
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) SMOKE=1; shift ;;
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument $1; usage: $0 [--smoke] [--out DIR] [--work DIR] [--wheels DIR]" >&2; exit 2 ;;
    esac
done
WORK=${WORK:-$OUT/work}
SITE=${SITE:-/tmp/roboimi_gpu_site}   # where carried wheels are installed
NPROC=$(env -u OMP_NUM_THREADS nproc)  # nproc reports OMP_NUM_THREADS when it is set

if [ "$SMOKE" = 1 ]; then
    MODE=smoke; DEVICE=cpu
    EPISODES=${EPISODES:-2}; IMAGE=${IMAGE:-64}; RECORD_WORKERS=${RECORD_WORKERS:-2}
    BATCH=${BATCH:-4}; TRAIN_WORKERS=${TRAIN_WORKERS:-0}; LOG_FREQ=${LOG_FREQ:-1}
    HEAD=${HEAD:-"agent.head.n_emb=32 agent.head.n_layer=1 agent.head.n_head=1"}
    MEASURE_S=${MEASURE_S:-6}; MEASURE_CAP_S=${MEASURE_CAP_S:-60}; X_SECONDS=${X_SECONDS:-12}
    TRAIN_FAST=${TRAIN_FAST-"train.precision=bf16 train.compile=false"}  # compiling on a CPU takes minutes
    EVAL_EPISODES=${EVAL_EPISODES:-2}; EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-30}; EVAL_WORKERS=${EVAL_WORKERS:-2}
    LATENCY=${LATENCY:-"--n-emb 32 --n-layer 1 --n-head 1 --repeats 3 --warmup 1"}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
    MODE=gpu; DEVICE=cuda
    EPISODES=${EPISODES:-50}; IMAGE=${IMAGE:-96}; RECORD_WORKERS=${RECORD_WORKERS:-$NPROC}
    BATCH=${BATCH:-80}; TRAIN_WORKERS=${TRAIN_WORKERS:-$((NPROC > 14 ? 12 : NPROC - 2))}; LOG_FREQ=${LOG_FREQ:-10}
    HEAD=${HEAD:-"agent.head.n_emb=384 agent.head.n_layer=18 agent.head.n_head=1"}
    MEASURE_S=${MEASURE_S:-45}; MEASURE_CAP_S=${MEASURE_CAP_S:-120}
    BUDGET_S=${BUDGET_S:-540}      # the whole check, from the start of this script
    RESERVE_S=${RESERVE_S:-100}    # kept after the x-prediction run for evaluation, latency and the report
    MIN_X_S=${MIN_X_S:-60}         # the x-prediction run's least time, even when the stages before it ran over
    TRAIN_FAST=${TRAIN_FAST-"train.precision=bf16 train.compile=true"}
    EVAL_EPISODES=${EVAL_EPISODES:-20}; EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-null}
    # Equal waves: 20 episodes on 16 cores run as 2 waves of 10 workers rather than 16 + 4.
    waves=$(( (EVAL_EPISODES + NPROC - 1) / NPROC ))
    EVAL_WORKERS=${EVAL_WORKERS:-$(( (EVAL_EPISODES + waves - 1) / waves ))}
    LATENCY=${LATENCY:-"--n-emb 384 --n-layer 18 --n-head 1 --repeats 50 --warmup 5"}
fi
LR=${LR:-5e-4}
# IMF's key-value heads follow its attention heads (n_kv_head must divide n_head; with 1 head both are 1).
IMF_HEAD="$HEAD agent.head.n_kv_head=$(sed -n 's/.*agent\.head\.n_head=\([0-9]*\).*/\1/p' <<<"$HEAD")"
DATA=$WORK/sim_transfer_${EPISODES}x${IMAGE}px
RUNS=$WORK/runs

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# The repository is run from source: it need not be installed where the check runs.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1

echo "== GPU check ($MODE) on $(uname -n), $NPROC cores; results: $OUT, demos / runs / logs: $WORK"
echo "   device $DEVICE; $EPISODES sim_transfer demos, cameras r_vis,top,front at ${IMAGE}x${IMAGE}; batch $BATCH, lr $LR;"
echo "   head: $HEAD; training overrides: ${TRAIN_FAST:-none}; $EVAL_EPISODES eval episodes on $EVAL_WORKERS workers"
mkdir -p "$OUT" "$RUNS"
STAGES=()
stage_done() {  # stage_done NAME START_SECONDS
    STAGES+=("\"$1\": $((SECONDS - $2))")
    echo "   $1: $((SECONDS - $2)) s"
}

RUN_ARGS=()
EVAL_DIR=
write_report() {  # write_report STATUS
    local stages_json=$WORK/stages.json
    (IFS=,; echo "{${STAGES[*]:+${STAGES[*]},} \"total\": $SECONDS}") > "$stages_json"
    local opts=(--mode "$MODE" --status "$1" --stages "$stages_json")
    [ -f "$WORK/preflight.json" ] && opts+=(--preflight "$WORK/preflight.json")
    [ -f "$WORK/recording.json" ] && opts+=(--recording "$WORK/recording.json")
    [ -f "$WORK/latency.json" ] && opts+=(--latency "$WORK/latency.json")
    [ -n "$EVAL_DIR" ] && opts+=(--eval-dir "$EVAL_DIR" --eval-run imf_x)
    "$PYTHON" gpu/gpu_check.py report "$OUT" "${opts[@]}" "${RUN_ARGS[@]}"
}
on_exit() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        echo "== GPU check FAILED (exit $rc) after $SECONDS s; partial results: $OUT/gpu_check.json, logs in $WORK" >&2
        write_report "stopped early (exit $rc after $SECONDS s)" || true
    fi
}
trap on_exit EXIT

# ---- 1. packages and GL loaders the machine lacks, from the carried wheel dir --------------------------------------
t=$SECONDS
if ! "$PYTHON" -c "import mujoco, dm_control, gym_aloha, gymnasium, hydra, omegaconf, diffusers" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "error: $PYTHON lacks the simulation / config packages and $WHEELS holds no wheels (bash gpu/gpu_wheels.sh)" >&2
        exit 1
    fi
    echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --root-user-action=ignore \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL\.so\.1' && ls "$WHEELS"/gl/*.deb >/dev/null 2>&1; then
    echo "== no libEGL on this machine: unpacking the GL loaders from $WHEELS/gl"
    for deb in "$WHEELS"/gl/*.deb; do dpkg -x "$deb" /; done
    ldconfig
fi
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$nvidia_egl" ] \
        && ! ls /usr/share/glvnd/egl_vendor.d/*nvidia* /etc/glvnd/egl_vendor.d/*nvidia* >/dev/null 2>&1; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia_egl  # the driver's EGL sits outside glvnd's search path
fi
stage_done install "$t"

# ---- 2. versions, GPU, rendering ----------------------------------------------------------------------------------
t=$SECONDS
echo "== preflight ($PYTHON)"
"$PYTHON" gpu/gpu_check.py preflight "$WORK/preflight.json" --image-size "$IMAGE" --device "$DEVICE"
stage_done preflight "$t"

# ---- 3. demonstrations ------------------------------------------------------------------------------------------------
t=$SECONDS
echo "== record $EPISODES demos into $DATA ($RECORD_WORKERS workers; log $WORK/record.log)"
"$PYTHON" roboimi/demos/record_sim_episodes.py task=sim_transfer num_episodes="$EPISODES" dataset_dir="$DATA" \
    "image_size=[$IMAGE,$IMAGE]" "camera_names=[r_vis,top,front]" seed=0 num_workers="$RECORD_WORKERS" \
    > "$WORK/record.log" 2>&1 || { tail -20 "$WORK/record.log"; exit 1; }
printf '{"episodes": %d, "image_size": %d, "cameras": "r_vis,top,front", "workers": %d, "seconds": %d}\n' \
    "$EPISODES" "$IMAGE" "$RECORD_WORKERS" $((SECONDS - t)) > "$WORK/recording.json"
stage_done record "$t"

# ---- 4, 5. training ---------------------------------------------------------------------------------------------------
# shellcheck disable=SC2206
TRAIN_COMMON=(data=sim_transfer data.dataset_dir="$DATA" train.device="$DEVICE" train.batch_size="$BATCH"
    train.lr="$LR" train.num_workers="$TRAIN_WORKERS" train.log_freq="$LOG_FREQ" train.save_freq=1000000
    train.val_split=0 train.rollout_val_freq_epochs=0 train.use_swanlab=false $TRAIN_FAST)

# train NAME MEASURE CAP OVERRIDES...: SIGTERM (the trainer checkpoints and exits 143) MEASURE seconds after the first
# log record (0: never) or CAP seconds after the start, whichever comes first, unless train.max_steps ends it before.
# A measure-only run's checkpoints are deleted: nothing evaluates them.
train() {
    local name=$1 measure=$2 cap=$3
    shift 3
    local run_dir=$RUNS/$name start=$SECONDS stop_at=$((SECONDS + cap)) term_at="" measuring=0
    rm -rf "$run_dir" "$run_dir.run.json" "$run_dir.log"
    echo "== train $name: $* (log $run_dir.log)"
    RUN_ARGS+=(--run "$name=$run_dir")
    "$PYTHON" gpu/gpu_check.py run "$run_dir.run.json" roboimi/demos/vla_scripts/train_vla.py \
        "${TRAIN_COMMON[@]}" hydra.run.dir="$run_dir" "$@" > "$run_dir.log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$measure" -gt 0 ] && [ "$measuring" = 0 ] && [ -s "$run_dir/logs.json.txt" ]; then
            measuring=1
            stop_at=$(( SECONDS + measure < stop_at ? SECONDS + measure : stop_at ))
        fi
        if [ -z "$term_at" ] && [ "$SECONDS" -ge "$stop_at" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            term_at=$SECONDS
        elif [ -n "$term_at" ] && [ $((SECONDS - term_at)) -ge 180 ]; then
            kill -KILL "$pid" 2>/dev/null || true  # not stopped 3 minutes after SIGTERM: hung
        fi
        sleep 1
    done
    local rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 143 ]; then
        tail -30 "$run_dir.log"
        echo "error: training $name failed (exit $rc); log $run_dir.log" >&2
        exit 1
    fi
    [ "$measure" -gt 0 ] && rm -rf "$run_dir/checkpoints"
    stage_done "train_$name" "$start"
}

train imf_u "$MEASURE_S" "$MEASURE_CAP_S" agent=resnet_imf_attnres $IMF_HEAD
train transformer "$MEASURE_S" "$MEASURE_CAP_S" agent=resnet_transformer $HEAD
if [ "$SMOKE" = 0 ]; then
    X_SECONDS=$((BUDGET_S - RESERVE_S - SECONDS))
    X_SECONDS=$((X_SECONDS > MIN_X_S ? X_SECONDS : MIN_X_S))
fi
if X_STEPS=$("$PYTHON" gpu/gpu_check.py steps "$RUNS/imf_u" "$RUNS/imf_u.run.json" "$X_SECONDS"); then
    X_WARMUP=$((X_STEPS / 10))
    echo "== x-prediction run: $X_SECONDS s at the u-run's rate -> train.max_steps=$X_STEPS"
else
    X_STEPS=100000 X_WARMUP=100
    echo "== x-prediction run: no rate measured, so $X_SECONDS s bound it alone (its LR schedule will not finish)"
fi
train imf_x 0 $((X_SECONDS + 15)) agent=resnet_imf_attnres agent.prediction=x $IMF_HEAD \
    train.max_steps="$X_STEPS" train.warmup_steps="$X_WARMUP"

# ---- 6. held-out evaluation of the x-prediction run ----------------------------------------------------------------
t=$SECONDS
CKPT=$RUNS/imf_x/policy.pt
[ -f "$CKPT" ] || CKPT=$RUNS/imf_x/checkpoints/last.pt  # stopped at its deadline: the checkpoint it wrote
EVAL_DIR=$WORK/eval_imf_x
echo "== evaluate $CKPT on $EVAL_EPISODES held-out episodes ($EVAL_WORKERS workers; log $WORK/eval.log)"
"$PYTHON" roboimi/demos/vla_scripts/eval_vla.py ckpt_path="$CKPT" device="$DEVICE" eval.num_episodes="$EVAL_EPISODES" \
    eval.num_workers="$EVAL_WORKERS" eval.max_timesteps="$EVAL_MAX_TIMESTEPS" eval.output_dir="$EVAL_DIR" \
    eval.record_video=false eval.trajectory_image=false > "$WORK/eval.log" 2>&1 || { tail -30 "$WORK/eval.log"; exit 1; }
stage_done eval "$t"

# ---- 7. latency ------------------------------------------------------------------------------------------------------
t=$SECONDS
echo "== IMF-1 vs DDIM-10 latency ($LATENCY, ${IMAGE}px)"
# shellcheck disable=SC2086
"$PYTHON" gpu/gpu_check.py latency "$WORK/latency.json" --device "$DEVICE" --image-size "$IMAGE" $LATENCY
stage_done latency "$t"

write_report complete
cat "$OUT/gpu_check.md"
echo "== done in $SECONDS s: $OUT/gpu_check.json, $OUT/gpu_check.md; runs, logs and demos in $WORK (eval: $EVAL_DIR)"
