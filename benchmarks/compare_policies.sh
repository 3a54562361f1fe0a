#!/usr/bin/env bash
# The policy comparison with the committed recipes: the DDPM/DDIM baseline against IMF-AttnRes, scored over the
# same 50 held-out seeds (1000-1049) at DDIM-10, IMF-1 and IMF-2.
#
#   1. from state on sim_transfer and sim_insertion: benchmarks/state_recipes.sh (about 1.2 h on 2 CPU cores);
#   2. from images on sim_transfer: one 96x96 top camera, 120 demos, agent=image_transformer | image_imf_attnres,
#      train=image_cpu, the two agents side by side on one core each (about 1.5 h, and 15-30 min of recording).
#
#   bash benchmarks/compare_policies.sh                 # both parts
#   PARTS=images bash benchmarks/compare_policies.sh    # one part
#   QUICK=1 PARTS=images bash benchmarks/compare_policies.sh   # tiny sizes, a few minutes: the pipeline end to end
#   # the 3-camera ResNet-18 recipe (a GPU's job, docs/training_at_scale.md):
#   DDPM_AGENT=resnet_transformer IMF_AGENT=resnet_imf_attnres DATA_CONFIG=sim_transfer CAMERAS=[r_vis,top,front] \
#     TRAIN=default EPISODES=50 PARTS=images bash benchmarks/compare_policies.sh
#
# Each stage skips work already done: the recorder resumes after the last complete episode, training resumes
# from its run dir (train.resume=auto), an eval with a summary.json is not repeated. docs/results.md has the
# numbers of the committed runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PARTS=${PARTS:-"state images"}
if [ "${QUICK:-0}" = 1 ]; then
    EPISODES=${EPISODES:-2}; EVAL_EPISODES=${EVAL_EPISODES:-2}; EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-20}
    OUT=${OUT:-runs/compare_quick}; DATA_DIR=${DATA_DIR:-data/compare_quick/sim_transfer_top}
    EXTRA=${EXTRA:-"train.max_steps=20 train.warmup_steps=2 train.log_freq=5 train.save_freq=20"}
    EXTRA="$EXTRA train.rollout_val_freq_epochs=0"
fi
DDPM_AGENT=${DDPM_AGENT:-image_transformer}
IMF_AGENT=${IMF_AGENT:-image_imf_attnres}
DATA_CONFIG=${DATA_CONFIG:-sim_transfer_top}
CAMERAS=${CAMERAS:-[top]}
IMAGE=${IMAGE:-96}                    # square camera images (px), recorded and trained at this size
EPISODES=${EPISODES:-120}             # scripted sim_transfer demos (seeds 0..)
TRAIN=${TRAIN:-image_cpu}             # the train preset: steps, batch, lr, EMA, rollout validation
EXTRA=${EXTRA:-}                      # more Hydra overrides for both agents, e.g. "train.max_steps=9000"
EVAL_EPISODES=${EVAL_EPISODES:-50}    # held-out rollouts per policy (seeds 1000..)
EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-null}  # null = the task's episode length
OUT=${OUT:-runs/compare}
DATA_DIR=${DATA_DIR:-data/sim_transfer_${IMAGE}px_$EPISODES}
FIGURES=${FIGURES:-$OUT/figures}
# On a shared CPU, more threads than free cores make every op wait on the slowest thread.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [[ " $PARTS " == *" state "* ]]; then
    echo "== part 1: the state recipes (benchmarks/state_recipes.sh)"
    OUT=$OUT/state bash benchmarks/state_recipes.sh
fi
[[ " $PARTS " == *" images "* ]] || exit 0
"$PYTHON" -c "import matplotlib" 2>/dev/null || "$PYTHON" -m pip install -q -e ".[bench]"  # the plots

echo "== part 2: record $EPISODES sim_transfer demos, cameras $CAMERAS at ${IMAGE}x${IMAGE}, in $DATA_DIR"
"$PYTHON" roboimi/demos/record_sim_episodes.py task=sim_transfer num_episodes="$EPISODES" \
    dataset_dir="$DATA_DIR" camera_names="$CAMERAS" image_size="[$IMAGE,$IMAGE]" seed=0

train() {  # train NAME AGENT_CONFIG
    local run_dir=$OUT/train_$1
    echo "== train $1 ($2, train=$TRAIN) in $run_dir (log: $run_dir.log)"
    # shellcheck disable=SC2086
    "$PYTHON" roboimi/demos/vla_scripts/train_vla.py agent="$2" data="$DATA_CONFIG" train="$TRAIN" \
        data.dataset_dir="$DATA_DIR" data.camera_names="$CAMERAS" train.resume=auto hydra.run.dir="$run_dir" \
        $EXTRA > "$run_dir.log" 2>&1
}

evaluate() {  # evaluate NAME INFERENCE_STEPS
    local out_dir=$OUT/eval_${1}_nfe$2
    if [ -f "$out_dir/summary.json" ]; then
        echo "== $out_dir/summary.json exists, evaluation skipped"
        return
    fi
    echo "== evaluate $1 at $2 steps over $EVAL_EPISODES rollouts in $out_dir"
    "$PYTHON" roboimi/demos/vla_scripts/eval_vla.py ckpt_path="$OUT/train_$1/policy.pt" agent.inference_steps="$2" \
        eval.num_episodes="$EVAL_EPISODES" eval.max_timesteps="$EVAL_MAX_TIMESTEPS" eval.output_dir="$out_dir" \
        eval.trajectory_image=false eval.num_workers=2
}

mkdir -p "$OUT"
train ddpm "$DDPM_AGENT" & ddpm_pid=$!
train imf "$IMF_AGENT" & imf_pid=$!
wait $ddpm_pid || { echo "DDPM training failed; see $OUT/train_ddpm.log"; exit 1; }
wait $imf_pid || { echo "IMF training failed; see $OUT/train_imf.log"; exit 1; }
evaluate ddpm 10
evaluate imf 1
evaluate imf 2

"$PYTHON" benchmarks/summarize_results.py \
    --train DDPM "$OUT/train_ddpm" --train IMF "$OUT/train_imf" \
    --eval DDIM-10 10 "$OUT/eval_ddpm_nfe10" --eval IMF-1 1 "$OUT/eval_imf_nfe1" --eval IMF-2 2 "$OUT/eval_imf_nfe2" \
    --figures-dir "$FIGURES" --out "$OUT/results.md"
cat "$OUT/results.md"
