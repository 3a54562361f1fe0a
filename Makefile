# Fresh-machine entry points (see README.md). Needs only python3.11 on PATH.
PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Built-in default job: record demos if missing -> train -> roll out -> report, for one experiment
# (roboimi/vla/conf/experiment/<name>.yaml). The default is the recipe that succeeds fastest on CPU: IMF-AttnRes
# from privileged state (joint state + object pose), camera-less demos. The baseline: EXPERIMENT=state_transfer_ddim.
EXPERIMENT ?= state_transfer_imf
EVAL_EPISODES ?= 50
RUN ?= runs/demo_$(EXPERIMENT)
# `make sweep`: one training run per seed (Hydra multirun, the jobs side by side on one core each), then every run
# scored on the same EVAL_EPISODES seeds and the table over the training seeds.
SEEDS ?= 0,1,2
SWEEP ?= runs/sweeps/$(EXPERIMENT)

.PHONY: setup demo sweep test test-slow

$(STAMP): setup.py
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) roboimi/demos/record_sim_episodes.py experiment=$(EXPERIMENT) num_workers=2
	$(PY) roboimi/demos/vla_scripts/train_vla.py experiment=$(EXPERIMENT) hydra.run.dir=$(RUN) train.resume=auto \
		train.use_swanlab=true train.swanlab_mode=local
	$(PY) roboimi/demos/vla_scripts/eval_vla.py ckpt_path=$(RUN)/policy.pt \
		eval.num_episodes=$(EVAL_EPISODES) eval.output_dir=$(RUN)/eval eval.record_video=true eval.num_workers=2
	@echo "policy: $(RUN)/policy.pt | checkpoint: $(RUN)/checkpoints/last.pt | metrics: $(RUN)/logs.json.txt | dashboard: $(PY) -m swanlab watch $(RUN)/swanlog | rollouts: $(RUN)/eval"

sweep: $(STAMP)
	$(PY) roboimi/demos/record_sim_episodes.py experiment=$(EXPERIMENT) num_workers=2
	OMP_NUM_THREADS=1 $(PY) roboimi/demos/vla_scripts/train_vla.py -m experiment=$(EXPERIMENT) train.seed=$(SEEDS) \
		hydra/launcher=joblib hydra.sweep.dir=$(SWEEP) train.resume=auto
	$(PY) roboimi/demos/vla_scripts/eval_sweep.py sweep_dir=$(SWEEP) eval.num_episodes=$(EVAL_EPISODES) eval.num_workers=2

test: $(STAMP)
	$(PY) -m pytest tests -q

test-slow: $(STAMP)
	$(PY) -m pytest tests -q -m slow
