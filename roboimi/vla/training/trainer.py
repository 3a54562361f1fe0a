"""The training workspace: data, agent, EMA, optimizer, checkpoints, logging and rollout validation of one run.

roboimi/demos/vla_scripts/train_vla.py starts it from the Hydra config; tests and benchmarks build it directly.
Outputs go to the run dir: checkpoints/, logs.json.txt, swanlog/ and rollouts/.
"""
import math
import os
import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from roboimi.atomic_file import atomic_write_path, remove_stale_temp_files
from roboimi.vla.training.checkpoint import (
    CorruptCheckpointError,
    capture_rng_state,
    load_checkpoint,
    model_config_differences,
    policy_export,
    restore_rng_state,
    save_checkpoint,
    upgrade_config,
    validation_seeds,
)
from roboimi.vla.data import build_datasets
from roboimi.vla.data.epoch_batch_sampler import EpochBatchSampler
from roboimi.vla.training.distributed import AgentLoss, assert_ranks_agree, init_distributed, parameter_fingerprint
from roboimi.vla.training.ema import build_ema
from roboimi.evaluation.agent_policy import evaluate_agent_in_subprocess
from roboimi.vla.training.experiment_logger import ExperimentLogger
from roboimi.vla.fast_paths import attention_backends, precision_autocast, use_channels_last
from roboimi.vla.models.heads.external_checkpoint import load_external_imf_head_state_dict
from roboimi.vla.training.optim import build_lr_scheduler, build_optimizer
from roboimi.vla.training.graceful_stop import GracefulStop
from roboimi.vla.training.run_dir import RunDirLock, checkpoints_newest_first, clear_run_outputs, prune_step_checkpoints
from roboimi.vla.training.runtime import seed_everything
from roboimi.vla.training.settings import validate_train_settings
from roboimi.worker_process import ignore_stop_signals


def make_loader(
    dataset, cfg, dist_ctx, shuffle_seed: int, split: str = "training"
) -> tuple[DataLoader, EpochBatchSampler]:
    """Batches of train.batch_size samples; the validation split's batches hold at most its samples per process (its
    loss is a mean over batches, so a smaller batch serves where the training batch would leave none)."""
    batch_sampler = EpochBatchSampler(
        len(dataset), cfg.train.batch_size, seed=shuffle_seed, rank=dist_ctx.rank, world_size=dist_ctx.world_size,
        split=split, fit_batch=split == "validation",
    )
    workers = cfg.train.num_workers
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=cfg.train.pin_memory and dist_ctx.device.type == "cuda",
        persistent_workers=cfg.train.persistent_workers and workers > 0,
        # Own generator: creating worker iterators must not consume the global RNG, or resumed runs diverge.
        generator=torch.Generator().manual_seed(shuffle_seed),
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
    )
    return loader, batch_sampler


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True) for k, v in batch.items()}


def describe_failure(error: BaseException) -> str:
    """'<type>: <first line of the message>' (and the line after it when the first ends in ':', as torch.compile's
    'backend=... raised:' does)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
    summary = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{type(error).__name__}: {summary}"


class StepMetrics:
    """Loss and gradient-norm sums over the steps since the last read, and the first step with a non-finite loss,
    kept on the training device so that a step never waits for it; read back every train.log_freq steps."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, device=device)  # loss, gradient norm
        self.steps = 0
        self.first_nonfinite = torch.tensor(-1, device=device)

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.sums += torch.stack([loss.float(), grad_norm.float()])
        self.steps += 1
        unseen = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(unseen, step, self.first_nonfinite)

    def first_nonfinite_step(self) -> int | None:
        step = int(self.first_nonfinite)
        return None if step < 0 else step

    def read_and_reset(self) -> tuple[float, float]:
        """(mean loss, mean gradient norm) over the steps since the last read."""
        loss, grad_norm = (self.sums / max(self.steps, 1)).tolist()
        self.sums.zero_()
        self.steps = 0
        return loss, grad_norm


def fill_data_dims(cfg: DictConfig, bundle) -> None:
    """Write the dims read from the files into the config, so checkpoints describe themselves."""
    cfg.agent.obs_dim = bundle.state_dim
    cfg.agent.action_dim = bundle.action_dim
    cfg.data.image_shape = list(bundle.image_shape) if bundle.image_shape else None  # None: no cameras


def resume_candidates(train_cfg, ckpt_dir: Path) -> list[Path]:
    """Checkpoints to continue from, most preferred first (train.resume=auto: newest first, and the first readable
    one is used), or [] to start fresh; a fresh start never replaces earlier checkpoints unless train.overwrite."""
    candidates = checkpoints_newest_first(ckpt_dir)
    if train_cfg.resume == "auto":
        if not candidates:
            print(f"train.resume=auto: no checkpoint in {ckpt_dir}, starting fresh.")
        return candidates
    if train_cfg.resume is not None:
        return [Path(train_cfg.resume)]
    if candidates and not train_cfg.overwrite:
        raise RuntimeError(
            f"{ckpt_dir} already holds checkpoints (newest: {candidates[0].name}). Continue that run with "
            f"train.resume=auto, start over in place with train.overwrite=true, or pick another hydra.run.dir."
        )
    return []


def load_resume_checkpoint(candidates: list[Path]) -> tuple[dict, Path]:
    """The first readable checkpoint of `candidates`, naming each unreadable one it skips."""
    for position, path in enumerate(candidates):
        try:
            checkpoint = load_checkpoint(path)
        except CorruptCheckpointError as error:
            if position == len(candidates) - 1:
                raise
            print(f"train.resume=auto: skipping {path}, which cannot be read ({error}); trying {candidates[position + 1]}.")
            continue
        if "optimizer" not in checkpoint:
            raise ValueError(
                f"{path} is an evaluation export (policy.pt: weights and config only) and cannot be resumed. Resume "
                f"from the run's full checkpoint, {path.parent / 'checkpoints' / 'last.pt'}, or train.resume=auto."
            )
        return checkpoint, path
    raise AssertionError("load_resume_checkpoint needs at least one candidate")


class Trainer:
    """The optimisation loop with its checkpoint, logging and validation events.

    Settings are checked before anything else; then the run dir is locked for the Trainer's lifetime (released
    by `fit` or `close`), so a second process on the same run dir stops at once. A run continued at train.max_steps
    whose policy.pt holds that step's weights does nothing and touches none of its files (a continued sweep's
    finished jobs). Under torchrun every rank runs this loop on its shard of each epoch (global batch =
    train.batch_size x world size); rank 0 alone logs, writes checkpoints and runs rollouts, and the other ranks wait
    at a barrier.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None):
        """`overrides`: the command line's `key=value` list, written with the config to <run_dir>/.hydra/ once the
        run dir is locked (so a refused second run changes nothing there) and the checkpoint to continue from is
        read (so a finished run's is left as it was)."""
        validate_train_settings(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist = init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.lock = RunDirLock(self.run_dir) if self.dist.is_main else None
        try:
            self._build(cfg, overrides or [])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run dir (also done by `fit`)."""
        if self.lock is not None:
            self.lock.release()

    def _write_run_config(self, config_yaml: str, overrides: list[str]) -> None:
        """<run_dir>/.hydra/config.yaml and overrides.yaml, what Hydra would write, but after the lock."""
        for name, content in (("config.yaml", config_yaml), ("overrides.yaml", OmegaConf.to_yaml(list(overrides)))):
            with atomic_write_path(self.run_dir / ".hydra" / name) as tmp_path:
                tmp_path.write_text(content)

    def _build(self, cfg: DictConfig, overrides: list[str]) -> None:
        config_yaml = OmegaConf.to_yaml(cfg)  # as composed, before the data fills in its dims
        resume_paths = resume_candidates(cfg.train, self.ckpt_dir)
        if self.dist.is_main:
            if cfg.train.overwrite and not resume_paths:
                for removed in clear_run_outputs(self.run_dir):
                    print(f"train.overwrite=true: deleted {removed} of the earlier run.")
            for stale in remove_stale_temp_files(self.ckpt_dir) + remove_stale_temp_files(self.run_dir):
                print(f"Removed {stale}, left by an interrupted write.")
        seed_everything(cfg.train.seed + self.dist.rank)

        self.bundle = build_datasets(
            cfg.data.dataset_dir,
            list(cfg.data.camera_names),
            cfg.data.obs_horizon,
            cfg.data.pred_horizon,
            val_split=cfg.train.val_split,
            seed=cfg.train.seed,
            image_resize_shape=cfg.data.image_resize_shape,
            state_keys=cfg.data.state_keys,
            preload_images=cfg.data.preload_images,
        )
        fill_data_dims(cfg, self.bundle)
        self.train_loader, self.batch_sampler = make_loader(self.bundle.train, cfg, self.dist, cfg.train.seed)
        self.val_loader = None
        if self.bundle.val is not None:
            self.val_loader, _ = make_loader(self.bundle.val, cfg, self.dist, cfg.train.seed + 1, split="validation")

        self.agent = instantiate(cfg.agent)
        self.agent.set_normalization_stats(self.bundle.stats)
        if cfg.train.init_head_from:
            load_external_imf_head_state_dict(self.agent.noise_pred_net, cfg.train.init_head_from)
        self.agent.to(self.device)
        if cfg.train.channels_last:
            use_channels_last(self.agent)
        self.loss_model = AgentLoss(self.agent)
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_model = torch.nn.parallel.DistributedDataParallel(self.loss_model, device_ids=device_ids)
        # Built after the move to the device, so the averaged copy lives there too, and before compiling: the copy
        # that rollouts use stays eager.
        self.ema = build_ema(self.agent, cfg.train.ema_power, cfg.train.ema_max_decay) if cfg.train.use_ema else None
        if cfg.train.compile:
            self.agent.compile_training_passes()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
        self.optimizer = build_optimizer(self.agent, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg.train)
        self.trainable_params = [p for p in self.agent.parameters() if p.requires_grad]

        self.metrics = StepMetrics(self.device)
        self.global_step = 0
        self.epoch = 0
        self.batches_done_in_epoch = 0
        self.best_success_rate = -1.0
        self.last_rollout_step = None
        self.last_success_rate = None  # of the latest rollout validation
        self.config_dict = OmegaConf.to_container(cfg, resolve=True)
        if resume_paths:
            self.resume_from(resume_paths)
        self.first_step = self.global_step  # of this process: where a compiled run compiles
        # Rank 0's answer on every rank: the others may not see the run dir's files.
        self.already_trained = self.dist.gather_objects(self.dist.is_main and self.policy_exported_at_max_steps())[0]
        if self.dist.is_main and not self.already_trained:
            self._write_run_config(config_yaml, overrides)

        self.logger = ExperimentLogger(
            self.run_dir,
            active=self.dist.is_main and not self.already_trained,
            use_swanlab=cfg.train.use_swanlab,
            project=cfg.train.swanlab_project,
            mode=cfg.train.swanlab_mode,
            experiment_name=self.experiment_name,
            group=self.experiment_name,
            config=self.config_dict,
        )
        dropped = self.logger.drop_records_after(self.global_step)
        if dropped:
            print(
                f"Dropped {dropped} line(s) of {self.logger.jsonl_path} logged after step {self.global_step}, where "
                f"this run continues: it logs those steps again."
            )

    def policy_exported_at_max_steps(self) -> bool:
        """Whether this run reached train.max_steps and exported that step's weights as policy.pt."""
        policy = self.run_dir / "policy.pt"
        return (
            self.global_step >= self.cfg.train.max_steps and policy.is_file()
            and load_checkpoint(policy)["global_step"] == self.global_step
        )

    # ---- checkpoints -------------------------------------------------------------------------
    @property
    def experiment_name(self) -> str:
        return self.cfg.train.swanlab_experiment_name or self.run_dir.name

    @property
    def global_batch_size(self) -> int:
        return self.cfg.train.batch_size * self.dist.world_size

    @property
    def policy(self) -> torch.nn.Module:
        """The weights rollouts act with: the EMA copy when train.use_ema, else the trained agent itself."""
        return self.agent if self.ema is None else self.ema.module

    def selection(self, best_rollout: bool = False) -> dict:
        """How the checkpoint's weights are chosen (checkpoint.weight_selection reads it back)."""
        if not best_rollout:
            return {"rule": "as_trained"}
        train = self.cfg.train
        return {"rule": "best_rollout", "seeds": validation_seeds(train.rollout_val_seed, train.rollout_num_episodes)}

    def checkpoint_payload(self, best_rollout: bool = False) -> dict:
        ema = {} if self.ema is None else {"ema": self.ema.module.state_dict(), "ema_updates": self.ema.n_averaged}
        return {
            "agent": self.agent.state_dict(),
            **ema,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "samples_done_in_epoch": self.batches_done_in_epoch * self.global_batch_size,
            "world_size": self.dist.world_size,
            "best_success_rate": self.best_success_rate,
            "config": self.config_dict,
            "selection": self.selection(best_rollout),
            "rng": self.dist.gather_objects(capture_rng_state()),
        }

    def export_policy(self) -> Path:
        """<run>/policy.pt: the rollout weights (EMA when kept), config and step; no optimizer. eval_vla.py takes it."""
        ema = {} if self.ema is None else {"ema": self.ema.module.state_dict()}
        weights = {
            "agent": self.agent.state_dict(), **ema, "config": self.config_dict, "global_step": self.global_step,
            "selection": self.selection(),
        }
        return save_checkpoint(self.run_dir / "policy.pt", policy_export(weights))

    def save(self, name: str) -> Path:
        """Collective: every rank contributes its RNG state, rank 0 writes. A step checkpoint is written only after
        checking that every step since the last check had a finite loss."""
        if not name.startswith("nonfinite"):
            self.stop_if_nonfinite()
        payload = self.checkpoint_payload(best_rollout=name == "best_rollout.pt")
        path = self.ckpt_dir / name
        if self.dist.is_main:
            save_checkpoint(path, payload)
            if name.startswith("step_"):
                save_checkpoint(self.ckpt_dir / "last.pt", payload)
            prune_step_checkpoints(self.ckpt_dir, self.cfg.train.keep_last)
        self.dist.barrier()
        return path

    def resume_from(self, candidates: list[Path]) -> None:
        """Continue from the first readable checkpoint of `candidates` (see load_resume_checkpoint)."""
        checkpoint, path = load_resume_checkpoint(candidates)
        differences = model_config_differences(upgrade_config(checkpoint["config"]), self.config_dict)
        if differences:
            raise ValueError(
                f"Checkpoint {path} was trained with a different model config; differing keys:\n  "
                + "\n  ".join(differences)
                + "\nResume with the same agent/data settings, or start a new run without train.resume."
            )
        self.agent.load_state_dict(checkpoint["agent"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.ema is not None:
            if "ema" in checkpoint:
                self.ema.module.load_state_dict(checkpoint["ema"])
                self.ema.n_averaged = checkpoint["ema_updates"]
            elif self.dist.is_main:
                print(f"{path} holds no EMA weights (trained with train.use_ema=false): the EMA starts from its weights.")
        self.global_step = checkpoint["global_step"]
        self.epoch = checkpoint["epoch"]
        self.batches_done_in_epoch = checkpoint["samples_done_in_epoch"] // self.global_batch_size
        self.best_success_rate = checkpoint["best_success_rate"]
        if len(checkpoint["rng"]) == self.dist.world_size:
            restore_rng_state(checkpoint["rng"][self.dist.rank])
        else:
            # A new world size cannot replay the old per-rank random streams; reseed each rank deterministically.
            seed_everything(self.cfg.train.seed + self.dist.rank + self.global_step)
        if self.dist.is_main:
            print(f"Resumed from {path} at step {self.global_step} (epoch {self.epoch}).")

    # ---- one optimizer step ------------------------------------------------------------------
    @contextmanager
    def forward_context(self):
        with attention_backends(self.cfg.train.fused_sdpa, self.device), precision_autocast(self.cfg.train.precision, self.device):
            yield

    def loss_and_gradients(self, batch: dict) -> torch.Tensor:
        """This process's loss on `batch`, with its gradients in the parameters' .grad."""
        with self.forward_context():
            loss = self.loss_model(to_device(batch, self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def train_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the loss averaged over ranks and the (clipped-from) gradient norm as device
        tensors, also added to `metrics`. Nothing here waits for the device: the loss is checked for finiteness where
        the metrics are read back (every train.log_freq steps) and before every checkpoint."""
        try:
            loss = self.loss_and_gradients(batch)
        except Exception as error:
            # Compilation happens in this process's first step (forward and backward); a failure there falls back.
            if not self.agent.compiled_training_passes or self.global_step > self.first_step:
                raise
            self.agent.drop_compiled_passes()
            reason = describe_failure(error)
            print(f"train.compile=true: torch.compile failed ({reason}); training continues without compiling.", flush=True)
            loss = self.loss_and_gradients(batch)
        mean_loss = self.dist.mean(loss.detach())
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, max_norm)
        check_sync = self.dist.enabled and self.global_step < self.cfg.train.ddp_sync_check_steps
        if check_sync:
            assert_ranks_agree(self.dist, "gradient norm", grad_norm.item(), self.global_step)
        self.optimizer.step()
        if check_sync:
            assert_ranks_agree(self.dist, "parameter fingerprint", parameter_fingerprint(self.trainable_params), self.global_step)
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.agent)
        self.metrics.add(self.global_step, mean_loss, grad_norm)
        self.global_step += 1
        return mean_loss, grad_norm

    def stop_if_nonfinite(self) -> None:
        """Raise FloatingPointError, after a diagnostic checkpoint, if a step since the last check had a non-finite
        loss (reads one number back from the device)."""
        step = self.metrics.first_nonfinite_step()
        if step is None:
            return
        path = self.save(f"nonfinite_step_{step}.pt")
        raise FloatingPointError(
            f"Non-finite training loss at step {step} (checked at step {self.global_step}); diagnostic checkpoint with "
            f"the weights of step {self.global_step}: {path}; the earlier checkpoints in {self.ckpt_dir} hold finite "
            f"weights. Try a lower train.lr, a positive train.grad_clip, or check the dataset for NaN/inf values."
        )

    # ---- validation events -------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float:
        self.agent.eval()
        losses = []
        for batch in self.val_loader:
            with self.forward_context():
                losses.append(self.agent.compute_loss(to_device(batch, self.device)))
        self.agent.train()
        return self.dist.mean(torch.stack(losses).mean()).item()

    def rollout_validation(self) -> None:
        """Collective: rank 0 runs the episodes while the other ranks wait; then every rank takes rank 0's success
        rate, so all of them join the (collective) save of best_rollout.pt when it is a new best."""
        success_rate = self._run_rollouts() if self.dist.is_main else None
        success_rate = self.dist.gather_objects(success_rate)[0]  # rank 0's, on every rank
        self.last_rollout_step = self.global_step
        if success_rate is None:
            return
        self.last_success_rate = success_rate
        if success_rate > self.best_success_rate:
            self.best_success_rate = success_rate
            self.save("best_rollout.pt")

    def _run_rollouts(self) -> float | None:
        """The validation episodes' success rate (None without a task to roll out)."""
        if self.cfg.data.task is None:
            warnings.warn("data.task is null: rollout validation skipped (set data.task to a built-in task).")
            return None
        output_dir = self.run_dir / "rollouts" / f"step_{self.global_step}"
        summary = evaluate_agent_in_subprocess(
            self.policy,
            self.cfg,
            num_episodes=self.cfg.train.rollout_num_episodes,
            seed=self.cfg.train.rollout_val_seed,
            output_dir=output_dir,
            record_video=self.cfg.train.rollout_record_video,
            progress=False,
        )
        self.logger.log_rollout_summary("rollout", summary, self.global_step)
        print(f"step {self.global_step}: rollout success rate {summary['success_rate']:.2f} -> {output_dir}")
        return summary["success_rate"]

    # ---- the loop ----------------------------------------------------------------------------
    def describe(self) -> str:
        """What this run will do: where, on what, with how many parameters and samples, tracked where."""
        cfg, bundle = self.cfg, self.bundle

        def millions(module) -> str:
            return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M"

        spec = self.agent.observation_spec
        cameras = "no cameras"
        if spec.camera_names:
            frames = (
                f"decoded into memory ({bundle.train.decoded_image_bytes / 2**30:.1f} GiB)"
                if bundle.train.images_preloaded else "read per sample"
            )
            cameras = f"cameras {list(spec.camera_names)} at {list(spec.image_shape)}, frames {frames}"
        val = f", {len(bundle.val)} validation samples" if bundle.val is not None else ""
        tracking = f"SwanLab ({cfg.train.swanlab_mode}) experiment '{self.experiment_name}'" if cfg.train.use_swanlab else "no SwanLab"
        start = f"from step {self.global_step}" if self.global_step else "from scratch"
        experiment = f"experiment {cfg.recipe.name}" if cfg.get("recipe", {}).get("name") else "no experiment"
        return "\n".join([
            f"Training {type(self.agent).__name__} ({experiment}, training seed {cfg.train.seed}) in {self.run_dir} "
            f"(pid {os.getpid()}, {self.device}, {self.dist.world_size} process(es), {torch.get_num_threads()} torch "
            f"thread(s)), {start} to step {cfg.train.max_steps}",
            f"  data       {cfg.data.dataset_dir}: {len(bundle.train_episodes)} training episodes, "
            f"{len(bundle.train)} samples{val}; {cameras}; state {list(spec.state_keys)} ({self.agent.obs_dim} dims)",
            f"  parameters encoder {millions(self.agent.vision_backbone)}, head {millions(self.agent.noise_pred_net)}; "
            f"batch {self.global_batch_size}, lr {cfg.train.lr}, EMA {'on' if self.ema is not None else 'off'}, "
            f"{cfg.train.precision}{', compiled' if cfg.train.compile else ''}",
            f"  tracking   {self.logger.jsonl_path}, {tracking}",
        ])

    def fit(self) -> None:
        cfg = self.cfg.train
        if self.already_trained:
            if self.dist.is_main:
                print(f"{self.run_dir}: already trained to step {self.global_step}: nothing to do (policy: "
                      f"{self.run_dir / 'policy.pt'}).")
            self.finish()
            return
        if self.dist.is_main:
            print(self.describe(), flush=True)
        self.agent.train()
        bar = tqdm(total=cfg.max_steps, initial=self.global_step, desc="train", dynamic_ncols=True, disable=not self.dist.is_main)
        with GracefulStop() as stop:
            self._loop(bar, stop)
        bar.close()
        if stop.requested:
            self.stop_early(stop.signum)
        if self.global_step % cfg.save_freq != 0:
            self.save(f"step_{self.global_step}.pt")
        if cfg.rollout_val_freq_epochs > 0 and self.last_rollout_step != self.global_step:
            self.rollout_validation()  # the success curve ends at the weights the run leaves behind
        if self.dist.is_main:
            self.export_policy()
        self.finish()
        if self.dist.is_main:
            final = "" if self.last_success_rate is None else f", final rollout success rate {self.last_success_rate:.0%}"
            print(
                f"Training done: {self.global_step} steps{final}. Policy for evaluation: {self.run_dir / 'policy.pt'}; "
                f"full checkpoint to resume: {self.ckpt_dir / 'last.pt'}; metrics: {self.logger.jsonl_path}"
            )

    def _loop(self, bar, stop: GracefulStop) -> None:
        """Train until train.max_steps, or until a stop signal, which is honoured between steps."""
        cfg = self.cfg.train
        last_log_time, last_log_step = time.perf_counter(), self.global_step
        while self.global_step < cfg.max_steps and not stop.requested:
            self.batch_sampler.set_epoch(self.epoch, skip_batches=self.batches_done_in_epoch)
            for batch in self.train_loader:
                self.train_step(batch)
                self.batches_done_in_epoch += 1
                bar.update(1)
                if self.global_step % cfg.log_freq == 0 or self.global_step == cfg.max_steps:
                    self.stop_if_nonfinite()
                    mean_loss, mean_grad_norm = self.metrics.read_and_reset()
                    now = time.perf_counter()
                    it_per_s = (self.global_step - last_log_step) / (now - last_log_time)
                    last_log_time, last_log_step = now, self.global_step
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    self.logger.log_scalars(
                        {"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": mean_grad_norm, "train/it_per_s": it_per_s},
                        self.global_step,
                    )
                if self.global_step % cfg.save_freq == 0:
                    self.save(f"step_{self.global_step}.pt")
                    if cfg.rollout_validate_on_checkpoint:
                        self.rollout_validation()
                if self.global_step >= cfg.max_steps or stop.requested:
                    break
            else:
                self.end_of_epoch()

    def stop_early(self, signum: int) -> None:
        """After a stop signal: checkpoint the finished steps, say how to continue, exit with 128 + signum."""
        path = self.save(f"step_{self.global_step}.pt")
        self.finish()
        if self.dist.is_main:
            print(
                f"Stopped by {signal.Signals(signum).name} at step {self.global_step} of {self.cfg.train.max_steps}; "
                f"checkpoint {path}. Continue with the same command plus train.resume=auto."
            )
        raise SystemExit(128 + signum)

    def finish(self) -> None:
        """Close the trackers and the process group, release the run dir."""
        self.logger.finish()
        self.dist.close()
        self.close()

    def end_of_epoch(self) -> None:
        if self.val_loader is not None:
            self.logger.log_scalars({"val/loss": self.validation_loss()}, self.global_step)
        freq = self.cfg.train.rollout_val_freq_epochs
        if freq > 0 and (self.epoch + 1) % freq == 0:
            self.rollout_validation()
        self.epoch += 1
        self.batches_done_in_epoch = 0
