#!/usr/bin/env bash
# The policy comparison under the results protocol (docs/results.md): for each setting, its IMF-AttnRes and
# DDPM/DDIM experiments (roboimi/vla/conf/experiment/<setting>_imf.yaml and _ddim.yaml) trained once per training
# seed, two jobs side by side on one core and one torch thread each; then every run's final weights scored on the
# same episode seeds, the table over the training seeds and the paired IMF - DDIM difference.
#
#   bash scripts/compare_policies.sh state_transfer state_insertion     # 3 seeds each, about 1.5 h on 2 cores
#   SEEDS=0,1 bash scripts/compare_policies.sh top_transfer             # 2 seeds of a pixel setting, about 3 h
#
# Settings: state_transfer, state_insertion, top_transfer, three_cam_transfer, top_insertion. Every stage continues
# where it stopped: the recorder after the last complete episode, each job from its run dir (train.resume=auto), each
# score that has its summary.json. Tables: runs/sweeps/<setting>/eval_final_*.md.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/sweep_lib.sh
SEEDS=${SEEDS:-0,1,2}                # training seeds (train.seed)
EVAL_EPISODES=${EVAL_EPISODES:-100}  # scored episodes per run, seeds 1000..
OUT=${OUT:-runs/sweeps}
[ $# -gt 0 ] || { echo "usage: $0 SETTING... (state_transfer state_insertion top_transfer three_cam_transfer top_insertion)"; exit 2; }

for setting in "$@"; do
    echo "== $setting: record, train ${setting}_imf and ${setting}_ddim at train.seed=$SEEDS in $OUT/$setting, score"
    record_demos "${setting}_imf"
    train_sweep "$OUT/$setting" "$SEEDS" "${setting}_imf,${setting}_ddim"
    score_sweep "$OUT/$setting" "$EVAL_EPISODES"
done
