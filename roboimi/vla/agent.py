"""VLAAgent: camera images + joint state -> chunks of joint-space actions (state alone without cameras).

The baseline policy trains its head as a DDPM noise predictor and samples with DDIM. Rollouts go through
`select_action`, which keeps observation and action queues (observation history in, action chunk out).
"""
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from torch import nn

from roboimi.vla.data import normalize_minmax, unnormalize_minmax
from roboimi.vla.observation_spec import ObservationSpec
from roboimi.vla.temporal_ensemble import TemporalEnsembler

NORMALIZATION_KEYS = ("qpos_min", "qpos_max", "action_min", "action_max")


def _append_filling(queue: deque, item) -> None:
    """Append `item`; an empty queue is filled with it, so the first observation stands in for the history."""
    queue.append(item)
    while len(queue) < queue.maxlen:
        queue.append(item)


class FrameHistory:
    """The last `length` frames of one camera, oldest first, in one uint8 buffer `frames` (length, H, W, 3).

    The buffer is allocated once per episode: a rollout step copies its frame in and shifts the older ones down, so
    queueing allocates nothing. The first frame after reset fills every slot (it stands in for the history).
    """

    def __init__(self, length: int, height: int, width: int):
        self.frames = torch.zeros(length, height, width, 3, dtype=torch.uint8)
        self._slots = self.frames.numpy()  # the same memory; numpy copies flipped (negative-stride) renders as they are
        self._empty = True

    def append(self, frame: np.ndarray) -> None:
        if self._empty:
            self._slots[:] = frame
            self._empty = False
            return
        for older, newer in zip(self._slots[:-1], self._slots[1:]):  # oldest first, so no slot is read after overwrite
            older[...] = newer
        self._slots[-1] = frame


class VLAAgent(nn.Module):
    def __init__(
        self,
        vision_backbone: nn.Module,
        head: Callable[..., nn.Module],
        action_dim: int,
        obs_dim: int,
        obs_horizon: int = 2,
        pred_horizon: int = 16,
        num_action_steps: int = 8,
        inference_steps: int = 10,
        camera_names: Sequence[str] = ("r_vis", "top", "front"),
        state_keys: Sequence[str] = ("qpos",),
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        normalization_stats: Mapping | None = None,
        temporal_ensemble_coeff: float | None = None,
        noise_scale: float = 1.0,
    ):
        super().__init__()
        max_action_steps = pred_horizon - obs_horizon + 1
        if num_action_steps > max_action_steps:
            raise ValueError(
                f"num_action_steps={num_action_steps} exceeds pred_horizon - obs_horizon + 1 = "
                f"{pred_horizon} - {obs_horizon} + 1 = {max_action_steps}: the executed window starts at the "
                f"current step (index obs_horizon - 1) of the predicted chunk. Lower num_action_steps or raise "
                f"pred_horizon."
            )
        if tuple(camera_names) != tuple(vision_backbone.camera_names):
            raise ValueError(
                f"camera_names={list(camera_names)} differs from the vision backbone's camera_names="
                f"{list(vision_backbone.camera_names)}. Set only data.camera_names; agent and backbone follow it."
            )
        if noise_scale < 0:
            raise ValueError(
                f"noise_scale={noise_scale} must be >= 0 (agent.noise_scale: the std of a plan's initial noise)."
            )
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; use 'epsilon' or 'sample'.")

        self.action_dim = action_dim
        self.obs_dim = obs_dim
        self.obs_horizon = obs_horizon
        self.pred_horizon = pred_horizon
        self.num_action_steps = num_action_steps
        # With temporal ensembling the policy re-plans at every step and num_action_steps is not used.
        self.temporal_ensembler = (
            None
            if temporal_ensemble_coeff is None
            else TemporalEnsembler(temporal_ensemble_coeff, horizon=pred_horizon - obs_horizon + 1)
        )
        self.inference_steps = inference_steps
        self.noise_scale = noise_scale
        # What the policy observes; the dataset builder and the evaluator follow it, and it is checked here only.
        self.observation_spec = ObservationSpec(camera_names, vision_backbone.input_shape, state_keys)
        self.prediction_type = prediction_type

        self.vision_backbone = vision_backbone
        # The one place where the condition width is defined: visual features first, then state
        # (num_cameras = 0 for a state-only agent, whose condition is the state alone).
        self.cond_dim = vision_backbone.num_cameras * vision_backbone.output_dim + obs_dim
        self.noise_pred_net = head(
            input_dim=action_dim,
            output_dim=action_dim,
            horizon=pred_horizon,
            n_obs_steps=obs_horizon,
            cond_dim=self.cond_dim,
        )
        # torch.compile'd encoder and head for the training step (`compile_training_passes`), kept out of the
        # module tree so the state-dict keys stay those of the plain modules.
        self._compiled = {}

        scheduler_args = dict(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
        )
        self.noise_scheduler = DDPMScheduler(**scheduler_args)
        self.ddim_scheduler = DDIMScheduler(**scheduler_args)

        # NaN until stats are set, so a policy without stats fails loudly instead of acting on garbage.
        for key, dim in zip(NORMALIZATION_KEYS, (obs_dim, obs_dim, action_dim, action_dim)):
            self.register_buffer(key, torch.full((dim,), float("nan")))
        self._stats_checked = False
        self.register_load_state_dict_post_hook(self._stats_loaded)
        if normalization_stats is not None:
            self.set_normalization_stats(normalization_stats)

        self.reset()

    # ---------------------------------------------------------------------------------------------
    # Normalization

    def set_normalization_stats(self, stats: Mapping) -> None:
        """Copy `{'qpos_min', 'qpos_max', 'action_min', 'action_max'}` (arrays or tensors) into the buffers."""
        missing = [key for key in NORMALIZATION_KEYS if key not in stats]
        if missing:
            raise ValueError(f"Normalization stats lack {missing}; got keys {sorted(stats)}.")
        for key in NORMALIZATION_KEYS:
            buffer = getattr(self, key)
            value = torch.as_tensor(stats[key], dtype=torch.float32)
            if value.shape != buffer.shape:
                raise ValueError(
                    f"Normalization stat {key} has shape {tuple(value.shape)}, expected {tuple(buffer.shape)} "
                    f"(obs_dim={self.obs_dim}, action_dim={self.action_dim}). Use stats of the same dataset."
                )
            buffer.copy_(value)
        self._stats_checked = False

    def _stats_loaded(self, module, incompatible_keys) -> None:
        self._stats_checked = False

    def get_normalization_stats(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key).detach().cpu().clone() for key in NORMALIZATION_KEYS}

    def _stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
        # Checked once after every change of the stats, not per call: the check reads the buffers back to the host.
        if not self._stats_checked:
            if any(torch.isnan(getattr(self, key)).any() for key in NORMALIZATION_KEYS):
                raise RuntimeError(
                    "The normalization stats are not set. Call agent.set_normalization_stats(stats) with the "
                    "dataset's stats, or load a checkpoint (its state dict holds them)."
                )
            self._stats_checked = True
        return low, high

    def _normalize_qpos(self, qpos: torch.Tensor) -> torch.Tensor:
        return normalize_minmax(qpos, *self._stats("qpos"))

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return normalize_minmax(action, *self._stats("action"))

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return unnormalize_minmax(action, *self._stats("action"))

    # ---------------------------------------------------------------------------------------------
    # Condition and loss

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.observation_spec.camera_names

    @property
    def _device(self) -> torch.device:
        return self.qpos_min.device

    def encode_observation(self, images: Mapping[str, torch.Tensor], qpos: torch.Tensor) -> torch.Tensor:
        """images {cam: uint8 (B, T, 3, H, W)}, raw qpos (B, T, obs_dim) -> cond (B, T, cond_dim)."""
        self.observation_spec.check_images(images, "The observation batch's images")
        if qpos.shape[-1] != self.obs_dim:
            raise ValueError(
                f"qpos has shape {tuple(qpos.shape)} but the agent was built with obs_dim={self.obs_dim}. "
                "Use data with the state dimension the agent was trained on."
            )
        state = self._normalize_qpos(qpos.to(self._device).float())  # (B, T, obs_dim)
        if not self.camera_names:
            return state
        return torch.cat([self.encode_frames(images), state], dim=-1)

    def encode_frames(self, images: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """uint8 frames {cam: (B, T, 3, H, W)} -> visual features (B, T, num_cams * output_dim), frame by frame."""
        pixels = {}
        for cam in self.camera_names:
            if images[cam].dtype != torch.uint8:
                raise TypeError(f"images[{cam!r}] has dtype {images[cam].dtype}; pass the raw uint8 frames.")
            pixels[cam] = images[cam].to(self._device).float() / 255.0
        return self.training_pass("vision_backbone")(pixels)

    def compile_training_passes(self) -> None:
        """torch.compile the encoder and the head for train-mode calls; eval-mode calls (validation loss, sampling,
        rollouts) and copies of the agent stay eager. Compilation happens at the first training step."""
        self._compiled = {name: torch.compile(getattr(self, name)) for name in ("vision_backbone", "noise_pred_net")}

    def drop_compiled_passes(self) -> None:
        self._compiled = {}

    @property
    def compiled_training_passes(self) -> bool:
        return bool(self._compiled)

    def training_pass(self, name: str) -> nn.Module:
        """The submodule `name` as the training step calls it: compiled in train mode after compile_training_passes."""
        module = getattr(self, name)
        return self._compiled.get(name, module) if self.training else module

    def __getstate__(self):
        # Compiled callables neither pickle (spawned rollout workers) nor deep-copy (EMA): copies run eager.
        return {**self.__dict__, "_compiled": {}}

    def _masked_mean(self, elementwise: torch.Tensor, action_is_pad: torch.Tensor | None) -> torch.Tensor:
        """Mean of a (B, pred_horizon, action_dim) loss over the real (non-padded) action steps."""
        elementwise = elementwise.float()  # reduce in float32 also under bf16 autocast
        if action_is_pad is None:
            return elementwise.mean()
        mask = (~action_is_pad.to(self._device))[..., None].float()  # (B, pred_horizon, 1)
        return (elementwise * mask).sum() / torch.clamp(mask.sum() * self.action_dim, min=1)

    def compute_loss(self, batch: Mapping) -> torch.Tensor:
        """DDPM objective on a dataset batch (raw qpos/action, uint8 images) -> scalar loss."""
        action = self.normalize_action(batch["action"].to(self._device).float())  # (B, pred_horizon, A)
        cond = self.encode_observation(batch["images"], batch["qpos"])
        noise = torch.randn_like(action)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (action.shape[0],), device=self._device
        )
        noisy_action = self.noise_scheduler.add_noise(action, noise, timesteps)
        pred = self.training_pass("noise_pred_net")(noisy_action, timesteps, cond)
        target = noise if self.prediction_type == "epsilon" else action
        return self._masked_mean((pred - target) ** 2, batch.get("action_is_pad"))

    # ---------------------------------------------------------------------------------------------
    # Inference

    def _initial_noise(self, batch_size: int, cond: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        shape = (batch_size, self.pred_horizon, self.action_dim)
        if noise is None:  # a caller's own noise is used as given
            return self.noise_scale * torch.randn(shape, device=cond.device, dtype=cond.dtype)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (B, pred_horizon, action_dim) = {shape}.")
        return noise.to(device=cond.device, dtype=cond.dtype)

    @torch.inference_mode()  # no autograd bookkeeping at all (no_grad still tracks versions and views)
    def predict_action(
        self, obs_batch: Mapping, num_steps: int | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """obs_batch {images, qpos} as in a dataset batch -> raw actions (B, pred_horizon, A).

        `num_steps` sampling steps (default `inference_steps`) from `noise` (default a fresh draw).
        Call `agent.eval()` first: dropout and random crops follow the module mode.
        """
        cond = self.encode_observation(obs_batch["images"], obs_batch["qpos"])
        return self.unnormalize_action(self.sample_actions(cond, num_steps, noise))

    @torch.inference_mode()
    def sample_actions(self, cond: torch.Tensor, num_steps: int | None = None, noise: torch.Tensor | None = None):
        """DDIM from noise: cond (B, obs_horizon, cond_dim) -> normalized actions (B, pred_horizon, A)."""
        batch_size = cond.shape[0]
        x = self._initial_noise(batch_size, cond, noise)
        self.ddim_scheduler.set_timesteps(num_steps or self.inference_steps)
        for k in self.ddim_scheduler.timesteps:
            timesteps = k.expand(batch_size).to(self._device)
            x = self.ddim_scheduler.step(self.noise_pred_net(x, timesteps, cond), k, x).prev_sample
        return x

    # ---------------------------------------------------------------------------------------------
    # Online rollout

    def reset(self) -> None:
        """Empty the observation and action queues; call on every environment reset."""
        height, width = self.observation_spec.image_shape or (0, 0)  # a state-only agent has no cameras
        self._queues = {
            "qpos": deque(maxlen=self.obs_horizon),
            "images": {cam: FrameHistory(self.obs_horizon, height, width) for cam in self.camera_names},
            # The visual features of each queued frame once encoded (None before): a frame is encoded once.
            "features": deque(maxlen=self.obs_horizon),
            "action": deque(maxlen=self.num_action_steps),
        }
        if self.temporal_ensembler is not None:
            self.temporal_ensembler.reset()
        self.last_preprocess_ms = 0.0

    def _populate_queues(self, obs: Mapping) -> None:
        """Append one env observation; right after reset it fills the whole history (repeated first frame)."""
        self.observation_spec.check_images(obs.get("images", {}), "The observation", channels_last=True)
        qpos = torch.from_numpy(self.observation_spec.state(obs))
        if qpos.shape != (self.obs_dim,):
            raise ValueError(
                f"The observation's state {list(self.observation_spec.state_keys)} has shape {tuple(qpos.shape)}; "
                f"the agent expects ({self.obs_dim},) (obs_dim). Check that the environment matches the training data."
            )
        frames = {cam: np.asarray(obs["images"][cam]) for cam in self.camera_names}
        for cam, frame in frames.items():
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(
                    f"obs['images'][{cam!r}] must be a uint8 (H, W, 3) array, got {frame.dtype} {tuple(frame.shape)}."
                )
        _append_filling(self._queues["qpos"], qpos)
        _append_filling(self._queues["features"], None)
        for cam, frame in frames.items():
            self._queues["images"][cam].append(frame)

    def _prepare_observation_batch(self) -> dict:
        """Queues -> {'images': {cam: uint8 (1, obs_horizon, 3, H, W)}, 'qpos': (1, obs_horizon, obs_dim)}.

        Without cameras 'images' is {} (a state-only backbone has no input_shape). On CPU the images are views of
        the frame histories (channels-last strides, as conv trunks like them), valid until the next observation.
        """
        images = {}
        for cam in self.camera_names:
            frames = self._queues["images"][cam].frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
            images[cam] = frames.unsqueeze(0).to(self._device)
        qpos = torch.stack(list(self._queues["qpos"])).unsqueeze(0).to(self._device)
        return {"images": images, "qpos": qpos}

    @torch.inference_mode()
    def _encode_pending_frames(self, images: Mapping[str, torch.Tensor], first: int = 0) -> None:
        """Encode the queued frames from index `first` on that have no features yet, in one batch; `images` as
        _prepare_observation_batch gives them."""
        features = self._queues["features"]
        pending = [i for i, feature in enumerate(features) if feature is None and i >= first]
        if not pending:
            return
        encoded = self.encode_frames({cam: frames[:, pending] for cam, frames in images.items()})  # (1, P, F)
        for i, feature in zip(pending, encoded[0]):
            features[i] = feature

    @torch.inference_mode()
    def _plan(self) -> torch.Tensor:
        """A new chunk of raw actions (1, pred_horizon, A) from the queued observations.

        Frames encoded at an earlier step keep their features (in eval mode the encoder is deterministic), so with
        the older frames encoded ahead of time a plan encodes only its newest frame.
        """
        batch = self._prepare_observation_batch()
        cond = self._normalize_qpos(batch["qpos"].float())  # (1, obs_horizon, obs_dim)
        if self.camera_names:
            self._encode_pending_frames(batch["images"])
            cond = torch.cat([torch.stack(list(self._queues["features"])).unsqueeze(0), cond], dim=-1)
        return self.unnormalize_action(self.sample_actions(cond))

    def select_action(self, obs: Mapping) -> torch.Tensor:
        """One env step: an env observation {<state key>: (d,) for each of the spec's state_keys, 'images': {cam:
        uint8 (H, W, 3)}} -> action (action_dim,) float32 on CPU. Re-plans every `num_action_steps` calls, or at
        every call with temporal ensembling (the weighted mean of every chunk's prediction for this step).

        A frame that the next plan will see is encoded in the step it arrives, so a plan's latency holds one frame's
        encoding, not obs_horizon frames'. `last_preprocess_ms` reports the queueing time, which the rollout
        evaluator splits out of the inference time.
        """
        start = time.perf_counter()
        self._populate_queues(obs)
        self.last_preprocess_ms = (time.perf_counter() - start) * 1e3
        if self.temporal_ensembler is not None:
            chunk = self._plan()[0, self.obs_horizon - 1 :]  # from the current step on
            return self.temporal_ensembler.update(chunk).float().cpu()
        if not self._queues["action"]:
            current = self.obs_horizon - 1  # index of the current step in the chunk
            self._queues["action"].extend(self._plan()[0, current : current + self.num_action_steps])
        action = self._queues["action"].popleft().float().cpu()
        steps_to_next_plan = len(self._queues["action"]) + 1
        if self.camera_names and steps_to_next_plan < self.obs_horizon:  # frames from this index on are queued then
            self._encode_pending_frames(self._prepare_observation_batch()["images"], first=steps_to_next_plan)
        return action
