#!/usr/bin/env bash
# Learning comparison on sim_transfer: the DDPM/DDIM baseline and the IMF-AttnRes policy trained with the same
# budget (demos, steps, batch, learning rate, ResNet backbone, head n_emb/n_layer/n_head), then scored over the
# same seeded rollouts: IMF at 1 and 2 steps, the baseline at DDIM-10.
#
#   bash benchmarks/compare_policies.sh            # full run: about 2 h on 2 CPU cores (agents train side by side)
#   QUICK=1 bash benchmarks/compare_policies.sh    # tiny sizes, a few minutes: checks the pipeline end to end
#
# Every size below can be overridden from the environment (e.g. STEPS=4000 bash ...). Each stage skips work
# already done, so an interrupted run continues where it stopped: the recorder resumes after the last complete
# episode, training resumes from its run dir's last.pt (train.resume=auto, fixed hydra.run.dir), and an eval
# with a summary.json is not repeated.
#
# Sizes: at 96x96 a batch-8 step costs 1.3 s (DDPM) / 1.6 s (IMF) on one CPU thread (benchmarks/train_step_cost.py),
# mostly the three ResNets; 64x64 keeps the cube and grippers visible on all three cameras at about half that.
# With both agents training at once (PARALLEL=1, one thread and one core each) 2500 steps took 0.91 h (DDPM) and
# 1.08 h (IMF), and each 50-rollout evaluation 15-20 min. docs/results.md has the numbers of that run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
if [ "${QUICK:-0}" = 1 ]; then
    EPISODES=${EPISODES:-2}; STEPS=${STEPS:-20}; EVAL_EPISODES=${EVAL_EPISODES:-2}; EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-20}
    LOG_FREQ=${LOG_FREQ:-5}; OUT=${OUT:-runs/compare_quick}; FIGURES=${FIGURES:-$OUT/figures}
    DATA_DIR=${DATA_DIR:-data/compare_quick/sim_transfer}
fi
EPISODES=${EPISODES:-50}              # scripted sim_transfer demos
IMAGE=${IMAGE:-64}                    # square camera images (px), recorded and trained at this size
STEPS=${STEPS:-2500}                  # optimizer steps per agent
BATCH=${BATCH:-8}
LR=${LR:-3e-4}
WARMUP=${WARMUP:-$((STEPS / 20))}
LOG_FREQ=${LOG_FREQ:-20}
N_EMB=${N_EMB:-256}; N_LAYER=${N_LAYER:-8}; N_HEAD=${N_HEAD:-4}
WORKERS=${WORKERS:-1}                 # DataLoader workers
THREADS=${THREADS:-1}                 # torch intra-op threads per process
PARALLEL=${PARALLEL:-1}               # 1: train both agents at once (one process each), logs in $OUT/train_<name>.log
EVAL_WORKERS=${EVAL_WORKERS:-2}       # rollout processes per evaluation (eval.num_workers)
EVAL_EPISODES=${EVAL_EPISODES:-50}    # seeded rollouts per policy (seeds 1000, 1001, ...)
EVAL_MAX_TIMESTEPS=${EVAL_MAX_TIMESTEPS:-null}  # null = the task's episode length
OUT=${OUT:-runs/compare}
DATA_DIR=${DATA_DIR:-data/compare/sim_transfer_${IMAGE}px}
FIGURES=${FIGURES:-docs/figures}
# On a shared CPU, more threads than free cores make every op wait on the slowest thread: one 20-step QUICK
# train step went from seconds to 32 s with torch's default of one thread per core.
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

"$PYTHON" -c "import matplotlib" 2>/dev/null || "$PYTHON" -m pip install -q -e ".[bench]"  # the plots

echo "== record $EPISODES sim_transfer demos at ${IMAGE}x${IMAGE} in $DATA_DIR"
"$PYTHON" roboimi/demos/record_sim_episodes.py task=sim_transfer num_episodes="$EPISODES" \
    dataset_dir="$DATA_DIR" image_size="[$IMAGE,$IMAGE]" seed=0

train() {  # train NAME AGENT_CONFIG [extra overrides...]
    local name=$1 agent=$2; shift 2
    local run_dir=$OUT/train_$name
    if [ -f "$run_dir/checkpoints/step_$STEPS.pt" ]; then
        echo "== $name: $run_dir/checkpoints/step_$STEPS.pt exists, training skipped"
        return
    fi
    echo "== train $name ($agent) for $STEPS steps in $run_dir"
    "$PYTHON" roboimi/demos/vla_scripts/train_vla.py agent="$agent" data.dataset_dir="$DATA_DIR" \
        agent.head.n_emb="$N_EMB" agent.head.n_layer="$N_LAYER" agent.head.n_head="$N_HEAD" "$@" \
        train.max_steps="$STEPS" train.batch_size="$BATCH" train.lr="$LR" train.warmup_steps="$WARMUP" \
        train.log_freq="$LOG_FREQ" train.save_freq="$STEPS" train.val_split=0.0 train.seed=42 \
        train.num_workers="$WORKERS" train.rollout_val_freq_epochs=0 train.use_swanlab=false \
        train.resume=auto hydra.run.dir="$run_dir"
}

evaluate() {  # evaluate NAME INFERENCE_STEPS
    local name=$1 steps=$2 out_dir=$OUT/eval_${1}_nfe$2
    if [ -f "$out_dir/summary.json" ]; then
        echo "== $out_dir/summary.json exists, evaluation skipped"
        return
    fi
    echo "== evaluate $name at $steps steps over $EVAL_EPISODES rollouts in $out_dir"
    "$PYTHON" roboimi/demos/vla_scripts/eval_vla.py ckpt_path="$OUT/train_$name/checkpoints/step_$STEPS.pt" \
        agent.inference_steps="$steps" eval.num_episodes="$EVAL_EPISODES" eval.max_timesteps="$EVAL_MAX_TIMESTEPS" \
        eval.output_dir="$out_dir" eval.num_workers="$EVAL_WORKERS"
}

if [ "$PARALLEL" = 1 ]; then
    mkdir -p "$OUT"
    train ddpm resnet_transformer > "$OUT/train_ddpm.log" 2>&1 & ddpm_pid=$!
    train imf resnet_imf_attnres agent.head.n_kv_head="$N_HEAD" > "$OUT/train_imf.log" 2>&1 & imf_pid=$!
    wait $ddpm_pid || { echo "DDPM training failed; see $OUT/train_ddpm.log"; exit 1; }
    wait $imf_pid || { echo "IMF training failed; see $OUT/train_imf.log"; exit 1; }
else
    train ddpm resnet_transformer
    train imf resnet_imf_attnres agent.head.n_kv_head="$N_HEAD"
fi
evaluate ddpm 10
evaluate imf 1
evaluate imf 2

"$PYTHON" benchmarks/summarize_results.py \
    --train DDPM "$OUT/train_ddpm" --train IMF "$OUT/train_imf" \
    --eval DDIM-10 10 "$OUT/eval_ddpm_nfe10" --eval IMF-1 1 "$OUT/eval_imf_nfe1" --eval IMF-2 2 "$OUT/eval_imf_nfe2" \
    --figures-dir "$FIGURES" --out "$OUT/results.md"
cat "$OUT/results.md"
