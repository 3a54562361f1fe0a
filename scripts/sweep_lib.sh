# The shared steps of the experiment drivers (source it): record an experiment's demos, train a Hydra multirun of
# experiments x training seeds side by side (one core and one torch thread per job), score every run of a sweep.
# Each step continues where it stopped: the recorder after its last complete episode, each job from its run dir
# (train.resume=auto), each score that has its summary.json.
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # more threads than free cores make every op wait on the slowest thread

record_demos() {  # record_demos EXPERIMENT: its demonstrations into its data.dataset_dir
    "$PYTHON" roboimi/demos/record_sim_episodes.py experiment="$1" num_workers=2
}

train_sweep() {  # train_sweep SWEEP_DIR SEEDS EXPERIMENTS [OVERRIDES...]: one job per experiment and training seed
    local sweep=$1 seeds=$2 experiments=$3
    shift 3
    "$PYTHON" roboimi/demos/vla_scripts/train_vla.py -m experiment="$experiments" train.seed="$seeds" \
        hydra/launcher=joblib hydra.sweep.dir="$sweep" train.resume=auto "$@"
}

score_sweep() {  # score_sweep SWEEP_DIR EPISODES [EVAL_OVERRIDES...]: every run on seeds 1000.., the table
    local sweep=$1 episodes=$2
    shift 2
    "$PYTHON" roboimi/demos/vla_scripts/eval_sweep.py sweep_dir="$sweep" eval.num_episodes="$episodes" \
        eval.num_workers=2 eval.trajectory_image=false "$@"
}
