#!/usr/bin/env bash
# The policy comparison with the committed recipes: the DDPM/DDIM baseline against IMF-AttnRes, scored over the
# same 50 held-out seeds (1000-1049) at DDIM-10, IMF-1 and IMF-2.
#
#   1. state: from state on sim_transfer and sim_insertion, benchmarks/state_recipes.sh (about 1.2 h on 2 CPU cores);
#   2. images: sim_transfer from one 96x96 top camera, 120 demos, agent=image_transformer | image_imf_attnres,
#      train=image_cpu with 16 000 steps, the two agents side by side on one core each (about 1.5 h), each scored
#      with its final weights and with its best rollout validation's (checkpoints/best_rollout.pt);
#   3. images_3cam: the same agents from the three 96x96 cameras (r_vis, top, front, one encoder each),
#      train=image_cpu_3cam with each camera's features dropped at random in training
#      (agent.vision_backbone.camera_dropout=0.3; without it neither agent learns the task in the budget), about 1.5 h;
#   4. images_insertion: sim_insertion from the top camera at 128x128 centre-cropped to its middle 80 rows, the
#      table (as many pixels as 96x96), 200 demos, the same agents with the state recipes' long chunks (32 predicted,
#      24 played) and 10 000 steps, about 1.7 h with the scores.
#   Both sim_transfer image parts train from one 3-camera recording (about 16 min with two recording workers); the
#   insertion part records its own (top camera, about 16 min).
#
#   bash benchmarks/compare_policies.sh                      # all parts
#   PARTS=images_3cam bash benchmarks/compare_policies.sh    # one part
#   QUICK=1 PARTS=images bash benchmarks/compare_policies.sh   # tiny sizes, a few minutes: the pipeline end to end
#   # the 3-camera ResNet-18 recipe (a GPU's job, docs/training_at_scale.md):
#   DDPM_AGENT=resnet_transformer IMF_AGENT=resnet_imf_attnres TRAIN=default EPISODES=50 PARTS=images_3cam \
#     bash benchmarks/compare_policies.sh
#
# Each stage skips work already done: the recorder resumes after the last complete episode, training resumes
# from its run dir (train.resume=auto), an eval with a summary.json is not repeated. docs/results.md has the
# numbers of the committed runs.
set -euo pipefail
set -f  # overrides are split unquoted (crop_shape=[80,128]) and must never match file names
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PARTS=${PARTS:-"state images images_3cam images_insertion"}
if [ "${QUICK:-0}" = 1 ]; then
    EPISODES=${EPISODES:-2}; EVAL_EPISODES=${EVAL_EPISODES:-2}; EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-20}
    OUT=${OUT:-runs/compare_quick}; DATA_ROOT=${DATA_ROOT:-data/compare_quick}; INSERTION_EPISODES=${INSERTION_EPISODES:-2}
    EXTRA=${EXTRA:-"train.max_steps=20 train.warmup_steps=2 train.log_freq=5 train.save_freq=20"}
    # One short validation rollout, at the end only: it writes the best_rollout.pt that the best-weights scores read.
    EXTRA="$EXTRA train.rollout_val_freq_epochs=1000 train.rollout_num_episodes=1 eval.max_timesteps=20"
fi
DDPM_AGENT=${DDPM_AGENT:-image_transformer}
IMF_AGENT=${IMF_AGENT:-image_imf_attnres}
IMAGE=${IMAGE:-96}                    # square camera images (px), recorded and trained at this size
EPISODES=${EPISODES:-120}             # scripted sim_transfer demos (seeds 0..)
INSERTION_EPISODES=${INSERTION_EPISODES:-200}  # scripted sim_insertion demos (seeds 0..)
INSERTION_IMAGE=${INSERTION_IMAGE:-128}  # the insertion part's top camera (px); the agents see its middle 5/8 rows
EXTRA=${EXTRA:-}                      # more Hydra overrides for both agents, e.g. "train.max_steps=9000"
EVAL_EPISODES=${EVAL_EPISODES:-50}    # held-out rollouts per policy (seeds 1000..)
EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-null}  # null = the task's episode length
OUT=${OUT:-runs/compare}
DATA_ROOT=${DATA_ROOT:-data}          # where the recordings go, named by camera size and demo count
# Both sim_transfer image parts train from one 3-camera recording; the one-camera part reads only its top camera.
DATA_DIR=${DATA_DIR:-$DATA_ROOT/sim_transfer_3cam_${IMAGE}px_$EPISODES}
INSERTION_DATA_DIR=${INSERTION_DATA_DIR:-$DATA_ROOT/sim_insertion_top_${INSERTION_IMAGE}px_$INSERTION_EPISODES}
# On a shared CPU, more threads than free cores make every op wait on the slowest thread.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [[ " $PARTS " == *" state "* ]]; then
    echo "== part 1: the state recipes (benchmarks/state_recipes.sh)"
    OUT=$OUT/state bash benchmarks/state_recipes.sh
fi
[[ " $PARTS " == *" images"* ]] || exit 0
"$PYTHON" -c "import matplotlib" 2>/dev/null || "$PYTHON" -m pip install -q -e ".[bench]"  # the plots

record() {  # record TASK EPISODES DATASET_DIR CAMERAS IMAGE
    echo "== record $2 $1 demos, cameras $4 at ${5}x$5, in $3"
    "$PYTHON" roboimi/demos/record_sim_episodes.py task="$1" num_episodes="$2" \
        dataset_dir="$3" camera_names="$4" image_size="[$5,$5]" seed=0 num_workers=2
}

train() {  # train PART_DIR NAME AGENT_CONFIG DATA_CONFIG CAMERAS TRAIN_PRESET PART_OVERRIDES (reads $PART_DATA_DIR)
    local run_dir=$1/train_$2
    echo "== train $2 ($3, cameras $5, train=$6) in $run_dir (log: $run_dir.log)"
    # shellcheck disable=SC2086
    "$PYTHON" roboimi/demos/vla_scripts/train_vla.py agent="$3" data="$4" train="$6" \
        data.dataset_dir="$PART_DATA_DIR" data.camera_names="$5" train.resume=auto hydra.run.dir="$run_dir" \
        $7 $EXTRA > "$run_dir.log" 2>&1
}

evaluate() {  # evaluate PART_DIR NAME INFERENCE_STEPS [best]: the final weights, or the best rollout validation's
    local out_dir=$1/eval_${2}${4:+_$4}_nfe$3 ckpt=$1/train_$2/policy.pt
    [ "${4:-}" = best ] && ckpt=$1/train_$2/checkpoints/best_rollout.pt
    if [ -f "$out_dir/summary.json" ]; then
        echo "== $out_dir/summary.json exists, evaluation skipped"
        return
    fi
    echo "== evaluate $2 at $3 steps over $EVAL_EPISODES rollouts in $out_dir"
    "$PYTHON" roboimi/demos/vla_scripts/eval_vla.py ckpt_path="$ckpt" agent.inference_steps="$3" \
        eval.num_episodes="$EVAL_EPISODES" eval.max_timesteps="$EVAL_MAX_TIMESTEPS" eval.output_dir="$out_dir" \
        eval.trajectory_image=false eval.num_workers=2
}

image_part() {  # PART_DATA_DIR=DIR image_part NAME DATA_CONFIG CAMERAS TRAIN_PRESET [OVERRIDES]: DDPM and IMF side
    # by side on the demos in DIR, then 50 rollouts each of the final weights and of the best rollout validation's
    local part=$OUT/$1
    echo "== part $1: $DDPM_AGENT vs $IMF_AGENT, data=$2, cameras $3, train=$4, in $part"
    mkdir -p "$part"
    train "$part" ddpm "$DDPM_AGENT" "$2" "$3" "$4" "${5:-}" & local ddpm_pid=$!
    train "$part" imf "$IMF_AGENT" "$2" "$3" "$4" "${5:-}" & local imf_pid=$!
    wait $ddpm_pid || { echo "DDPM training failed; see $part/train_ddpm.log"; exit 1; }
    wait $imf_pid || { echo "IMF training failed; see $part/train_imf.log"; exit 1; }
    evaluate "$part" ddpm 10
    evaluate "$part" imf 1
    evaluate "$part" imf 2
    evaluate "$part" ddpm 10 best
    evaluate "$part" imf 1 best
    "$PYTHON" benchmarks/summarize_results.py \
        --train DDPM "$part/train_ddpm" --train IMF "$part/train_imf" \
        --eval DDIM-10 10 "$part/eval_ddpm_nfe10" --eval IMF-1 1 "$part/eval_imf_nfe1" --eval IMF-2 2 "$part/eval_imf_nfe2" \
        --figures-dir "$part/figures" --out "$part/results.md"
    cat "$part/results.md"
}

if [[ " $PARTS " == *" images "* || " $PARTS " == *" images_3cam "* ]]; then
    record sim_transfer "$EPISODES" "$DATA_DIR" "[r_vis,top,front]" "$IMAGE"
fi
if [[ " $PARTS " == *" images "* ]]; then
    PART_DATA_DIR=$DATA_DIR image_part images sim_transfer_top "[top]" "${TRAIN:-image_cpu}" "train.max_steps=16000"
fi
if [[ " $PARTS " == *" images_3cam "* ]]; then
    PART_DATA_DIR=$DATA_DIR image_part images_3cam sim_transfer "[r_vis,top,front]" "${TRAIN:-image_cpu_3cam}" \
        "agent.vision_backbone.camera_dropout=${CAMERA_DROPOUT:-0.3}"
fi
if [[ " $PARTS " == *" images_insertion "* ]]; then
    record sim_insertion "$INSERTION_EPISODES" "$INSERTION_DATA_DIR" "[top]" "$INSERTION_IMAGE"
    # The rows above and below the table are black in the top view: a centre crop drops them, fixed (a random shift
    # would move the objects against the arms' joint state, docs/results.md).
    PART_DATA_DIR=$INSERTION_DATA_DIR image_part images_insertion sim_insertion_top "[top]" "${TRAIN:-image_cpu}" \
        "agent.pred_horizon=32 agent.num_action_steps=24 train.max_steps=10000 train.rollout_val_freq_epochs=2
        agent.vision_backbone.crop_shape=[$((INSERTION_IMAGE * 5 / 8)),$INSERTION_IMAGE] agent.vision_backbone.crop_is_random=false"
fi
