#!/usr/bin/env bash
# The reference objective at a user's scale: IMF-AttnRes from state on sim_transfer (50 demos) trained with the
# reference objective (u-prediction, loss in velocity space) and with the state recipe's (x-prediction, loss in data
# space), side by side, on the formal run's batch and learning rate (80, 5e-4),
# out to STEPS x 80 samples (4 M by default), with rollout validation every VAL_EPOCHS epochs (20 000 samples an
# epoch), then both final weights scored over 50 held-out seeds (1000-1049): x at one step, u at 1-16 steps.
#
#   bash benchmarks/prediction_at_scale.sh            # 50 000 steps a run, hours on 2 CPU cores; re-run it to continue
#   STEPS=2000 VAL_EPOCHS=4 OUT=runs/prediction_quick bash benchmarks/prediction_at_scale.sh   # a short check
#
# Each run trains in its own process on one core (one torch thread). Every stage skips what is done: the recorder
# resumes, training resumes from the run dir's newest checkpoint (train.resume=auto, one every 1000 steps), a
# finished eval is kept, so a run cut off by the end of a session continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import matplotlib" 2>/dev/null || "$PYTHON" -m pip install -q -e ".[bench]"  # the plots
STEPS=${STEPS:-50000}              # 50 000 steps of batch 80: 4 M samples
VAL_EPOCHS=${VAL_EPOCHS:-25}       # 25 epochs of 20 000 samples: a validation point every 500 000 samples
EPISODES=${EPISODES:-50}           # training demos (seeds 0..)
EVAL_EPISODES=${EVAL_EPISODES:-50} # held-out rollouts per policy (seeds 1000..)
U_NFES=${U_NFES:-"1 2 4 8 16"}    # sampling steps the u run is scored at: its one-step map fails where more steps work
OUT=${OUT:-runs/prediction_at_scale}
DATA_DIR=data/sim_transfer_state_$EPISODES
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

train() {  # train PREDICTION LOSS_SPACE
    local run_dir=$OUT/imf_$1
    echo "== train prediction=$1 loss_space=$2 in $run_dir (log: $run_dir.log)"
    "$PYTHON" roboimi/demos/vla_scripts/train_vla.py agent=state_imf_attnres data=sim_transfer_state train=state \
        data.dataset_dir="$DATA_DIR" agent.prediction="$1" agent.loss_space="$2" train.batch_size=80 train.lr=5e-4 \
        train.max_steps="$STEPS" train.rollout_val_freq_epochs="$VAL_EPOCHS" train.rollout_num_episodes=20 \
        train.save_freq=1000 train.resume=auto hydra.run.dir="$run_dir" > "$run_dir.log" 2>&1
}

evaluate() {  # evaluate PREDICTION NFE
    local run_dir=$OUT/imf_$1 out_dir=$OUT/imf_$1/eval_nfe$2
    if [ -f "$out_dir/summary.json" ]; then
        echo "== $out_dir/summary.json exists, evaluation skipped"
        return
    fi
    "$PYTHON" roboimi/demos/vla_scripts/eval_vla.py ckpt_path="$run_dir/checkpoints/last.pt" agent.inference_steps="$2" \
        eval.num_episodes="$EVAL_EPISODES" eval.output_dir="$out_dir" eval.trajectory_image=false eval.num_workers=2
}

mkdir -p "$OUT"
echo "== record $EPISODES camera-less sim_transfer demos in $DATA_DIR"
"$PYTHON" roboimi/demos/record_sim_episodes.py task=sim_transfer num_episodes="$EPISODES" \
    dataset_dir="$DATA_DIR" camera_names=[] seed=0 num_workers=2
train u velocity & u_pid=$!
train x data & x_pid=$!
wait $u_pid || { echo "prediction=u training stopped or failed (see $OUT/imf_u.log); re-run this script to continue"; exit 1; }
wait $x_pid || { echo "prediction=x training stopped or failed (see $OUT/imf_x.log); re-run this script to continue"; exit 1; }
u_evals=()
for nfe in $U_NFES; do
    evaluate u "$nfe"
    u_evals+=(--eval "IMF-$nfe u" "$nfe" "$OUT/imf_u/eval_nfe$nfe")
done
evaluate x 1
"$PYTHON" benchmarks/summarize_results.py --train "IMF u, velocity loss" "$OUT/imf_u" --train "IMF x, data loss" "$OUT/imf_x" \
    "${u_evals[@]}" --eval "IMF-1 x" 1 "$OUT/imf_x/eval_nfe1" \
    --figures-dir "$OUT/figures" --out "$OUT/results.md"
cat "$OUT/results.md"
