#!/usr/bin/env bash
# The reference objective at a user's scale: IMF-AttnRes from state on sim_transfer trained with the reference
# objective (experiment=state_transfer_imf_u_4m: u-prediction, loss on the velocity) and with the recipe's
# (state_transfer_imf_x_4m: x-prediction, loss in data space), side by side, at the formal run's batch and learning
# rate out to 4 M samples; then every run scored at 1-16 sampling steps, since the u run's one-step map is where it
# fails.
#
#   bash scripts/prediction_at_scale.sh                # 50 000 steps a run, hours on 2 CPU cores; re-run to continue
#   SEEDS=0,1 bash scripts/prediction_at_scale.sh      # more training seeds
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/sweep_lib.sh
SEEDS=${SEEDS:-0}
EVAL_EPISODES=${EVAL_EPISODES:-50}  # scored episodes per run, seeds 1000..
NFES=${NFES:-"1 2 4 8 16"}          # sampling steps each run is scored at
OUT=${OUT:-runs/sweeps/prediction_at_scale}

record_demos state_transfer_imf_u_4m
train_sweep "$OUT" "$SEEDS" state_transfer_imf_u_4m,state_transfer_imf_x_4m
for nfe in $NFES; do
    score_sweep "$OUT" "$EVAL_EPISODES" agent.inference_steps="$nfe"
done
