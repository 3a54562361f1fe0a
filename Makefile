# Fresh-machine entry points (see README.md). Needs only python3.11 on PATH.
PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Built-in default job: record demos if missing -> train briefly on CPU -> roll out -> report.
AGENT ?= resnet_transformer
TASK ?= sim_transfer
DATA ?= data/$(TASK)
EPISODES ?= 20
STEPS ?= 300
BATCH ?= 8
EVAL_EPISODES ?= 5
RUN ?= runs/demo_$(AGENT)

.PHONY: setup demo test test-slow

$(STAMP): setup.py
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) roboimi/demos/record_sim_episodes.py task=$(TASK) num_episodes=$(EPISODES) dataset_dir=$(DATA) image_size=[96,96] seed=0
	$(PY) roboimi/demos/vla_scripts/train_vla.py agent=$(AGENT) data=$(TASK) data.dataset_dir=$(DATA) \
		hydra.run.dir=$(RUN) train.resume=auto train.device=auto train.max_steps=$(STEPS) train.batch_size=$(BATCH) \
		train.num_workers=2 train.val_split=0.0 train.warmup_steps=50 train.log_freq=25 train.save_freq=$(STEPS) \
		train.rollout_val_freq_epochs=0 train.use_swanlab=true train.swanlab_mode=local
	$(PY) roboimi/demos/vla_scripts/eval_vla.py ckpt_path=$(RUN)/checkpoints/last.pt \
		eval.num_episodes=$(EVAL_EPISODES) eval.output_dir=$(RUN)/eval eval.record_video=true
	@echo "checkpoint: $(RUN)/checkpoints/last.pt | metrics: $(RUN)/logs.json.txt | dashboard: $(PY) -m swanlab watch $(RUN)/swanlog | rollouts: $(RUN)/eval"

test: $(STAMP)
	$(PY) -m pytest tests -q

test-slow: $(STAMP)
	$(PY) -m pytest tests -q -m slow
