"""IMFVLAAgent: the VLAAgent trained with the improved-MeanFlow (iMF) objective and sampled in 1..N steps.

Time runs from data (t = 0) to noise (t = 1). The average velocity u(z, r, t | cond) over [r, t] comes from the
head fn(z, r, t, cond); training matches the compound velocity V = u + (t - r) * du/dt to the instantaneous
target e - x.

Two parameterizations of u by the head (`prediction`):
  'u': u = fn(z, r, t, cond), the reference iMF head.
  'x': fn estimates the clean chunk x̂ and u = (z - x̂) / max(t, x_prediction_min_t). One step from t = 1 to
       r = 0 returns x̂ itself. The network regresses a bounded, low-variance target (the normalized actions)
       instead of a velocity that mixes noise and data, which is what makes small-data policies fit.

Where the loss is measured (`loss_space`):
  'velocity': the error of V against e - x, the reference objective.
  'data': that error times t. With x-prediction it is x - x̂ (+ t (t - r) du/dt on rows with r < t): the velocity
       error is (x - x̂) / t there, so the velocity loss weighs a row by 1 / t^2 and the few nearly clean rows, whose
       best guess is their own input, dominate every gradient; the data-space loss weighs all noise levels alike.
"""
import warnings
from contextlib import nullcontext

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from roboimi.vla.agent import VLAAgent

# The first dual tensor makes torch load its forward-mode decompositions through torch.jit.script, which warns that
# it is deprecated: torch's own internals, nothing a user can act on, so it stays off the first screen of a run.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

LOSS_TYPES = ("mse", "pseudo_huber")
PREDICTIONS = ("u", "x")
LOSS_SPACES = ("velocity", "data")
DERIVATIVE_PRECISIONS = ("fp32", "autocast")


class IMFVLAAgent(VLAAgent):
    def __init__(
        self,
        *args,
        p_mean: float = -0.4,
        p_std: float = 1.0,
        data_proportion: float = 0.5,
        loss_type: str = "mse",
        pseudo_huber_delta: float = 1.0,
        prediction: str = "u",
        x_prediction_min_t: float = 1e-3,
        loss_space: str = "velocity",
        derivative_precision: str = "fp32",
        **kwargs,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"Unsupported IMF prediction: {prediction!r}. Allowed values: 'u', 'x' (agent.prediction).")
        if not 0.0 < x_prediction_min_t <= 1.0:
            raise ValueError(f"x_prediction_min_t={x_prediction_min_t} must lie in (0, 1]: u = (z - x̂) / max(t, it).")
        if loss_space not in LOSS_SPACES:
            raise ValueError(f"Unsupported IMF loss_space: {loss_space!r}. Allowed values: 'velocity', 'data' (agent.loss_space).")
        if derivative_precision not in DERIVATIVE_PRECISIONS:
            raise ValueError(
                f"Unsupported derivative_precision: {derivative_precision!r}. Allowed values: 'fp32', 'autocast' "
                f"(agent.derivative_precision)."
            )
        if loss_type not in LOSS_TYPES:
            raise ValueError(
                f"Unsupported IMF-AttnRes loss_type: {loss_type!r}. Allowed values: 'mse', 'pseudo_huber'."
            )
        if not 0.0 <= data_proportion <= 1.0:
            raise ValueError(f"data_proportion={data_proportion} must lie in [0, 1] (fraction of rows with r = t).")
        super().__init__(*args, **kwargs)
        self.p_mean = p_mean
        self.p_std = p_std
        self.data_proportion = data_proportion
        self.loss_type = loss_type
        self.pseudo_huber_delta = pseudo_huber_delta
        self.prediction = prediction
        self.x_prediction_min_t = x_prediction_min_t
        self.loss_space = loss_space
        self.derivative_precision = derivative_precision

    def _sample_tr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit-normal (t, r) per sample, each (B,) in x's dtype, with r <= t.

        The first `num_equal_rows(B)` rows get r = t (set before sorting), so on those rows t is a single draw;
        elsewhere t and r are the max and min of two draws.
        """
        batch_size = x.shape[0]
        n1 = torch.randn(batch_size, device=x.device, dtype=x.dtype)
        n2 = torch.randn(batch_size, device=x.device, dtype=x.dtype)
        t0 = torch.sigmoid(self.p_std * n1 + self.p_mean)
        r0 = torch.sigmoid(self.p_std * n2 + self.p_mean)
        num_equal = self.num_equal_rows(batch_size)
        r0 = torch.cat([t0[:num_equal], r0[num_equal:]])
        return torch.maximum(t0, r0), torch.minimum(t0, r0)

    def num_equal_rows(self, batch_size: int) -> int:
        """How many leading rows of a batch `_sample_tr` draws with r = t."""
        return int(batch_size * self.data_proportion)

    @staticmethod
    def _broadcast_batch_time(time, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar or (B,) time -> (B,) in x's dtype/device and a (B, 1, 1) view for broadcasting over x."""
        batch_size = x.shape[0]
        flat = torch.as_tensor(time, dtype=x.dtype, device=x.device).reshape(-1).expand(batch_size)
        return flat, flat.view(batch_size, *([1] * (x.ndim - 1)))

    def average_velocity(self, z: torch.Tensor, r, t, cond: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """u(z, r, t | cond) (B, pred_horizon, A) in the configured parameterization; r, t scalars or (B,).

        `head`: the head module to call; default: the head as the training step calls it (compiled or not).
        """
        out = (head or self.training_pass("noise_pred_net"))(z, r, t, cond)
        if self.prediction == "u":
            return out
        # The clamp keeps u finite near t = 0, where z is already the data and u matters little.
        _, t_view = self._broadcast_batch_time(t, z)
        return (z - out) / t_view.clamp(min=self.x_prediction_min_t)

    def time_derivative(
        self, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """du/dt (B, pred_horizon, A) along (dz, dr, dt) = (v, 0, 1) at (z_t, r, t), without a graph.

        du/dt enters the loss only through a stop-gradient, so the JVP runs under no_grad: autograd records none of
        its tangent ops, which a JVP through the trainable weights would otherwise keep for the backward pass. It
        uses forward-mode AD's dual tensors directly (torch.func.jvp is the same computation behind a functorch
        transform layer, 7-10 % slower on CPU); r and cond carry no tangent, which is the zero tangent along them.
        The head runs eager: torch.compile does not trace dual tensors.
        """
        # Fused SDPA kernels have no forward-mode derivative; the math backend does, on every device.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), forward_ad.dual_level():
            z_dual, t_dual = forward_ad.make_dual(z_t, v), forward_ad.make_dual(t, torch.ones_like(t))
            u = self.average_velocity(z_dual, r, t_dual, cond, head=self.noise_pred_net)
            return forward_ad.unpack_dual(u).tangent

    def _compound_velocity(
        self, u: torch.Tensor, du_dt: torch.Tensor, t: torch.Tensor, r: torch.Tensor
    ) -> torch.Tensor:
        """V = u + (t - r) * stopgrad(du/dt), (t - r) broadcast per sample."""
        _, t_view = self._broadcast_batch_time(t, u)
        _, r_view = self._broadcast_batch_time(r, u)
        return u + (t_view - r_view) * du_dt.detach()

    def _elementwise_loss(self, error: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "mse":
            return error**2
        delta = self.pseudo_huber_delta
        return delta**2 * (torch.sqrt(1 + (error / delta) ** 2) - 1)

    def _model_velocity(self, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Compound velocity V (B, pred_horizon, A) of every row, with gradients through u.

        u of all rows comes from one forward pass with a graph (one batch: cheaper than a pass per row group).
        Rows with r = t need no du/dt, as (t - r) du/dt vanishes: those are the first `num_equal_rows(B)` rows as
        `_sample_tr` draws them, and only the rows after them get the v pass and the graph-free JVP (a fixed split:
        no host sync, fixed shapes for a compiled head). Loss and gradients equal those of the reference JVP with
        autograd on every row; with dropout on, u and du/dt see different dropout masks (in the reference they
        share one). With `derivative_precision='fp32'` the v pass and the JVP run with autocast off.
        """
        u = self.average_velocity(z_t, r, t, cond)
        first_moving = self.num_equal_rows(z_t.shape[0])
        if first_moving == z_t.shape[0]:
            return u
        z, r_m, t_m, cond_m = z_t[first_moving:], r[first_moving:], t[first_moving:], cond[first_moving:]
        fp32 = self.derivative_precision == "fp32"
        with torch.autocast(z.device.type, enabled=False) if fp32 else nullcontext():
            cond_m = cond_m.float() if fp32 else cond_m
            with torch.no_grad():
                v = self.average_velocity(z, t_m, t_m, cond_m)  # u(z, t, t) = instantaneous velocity
            du_dt = self.time_derivative(z, r_m, t_m, v, cond_m)
        du_dt = torch.cat([du_dt.new_zeros((first_moving, *du_dt.shape[1:])), du_dt])  # (B, pred_horizon, A)
        return self._compound_velocity(u, du_dt, t, r)

    def compute_loss(self, batch) -> torch.Tensor:
        """iMF objective on a dataset batch (raw qpos/action, uint8 images) -> scalar loss.

        RNG order: condition encoder (crops), e, t draws, r draws, dropout of the pass for u, of the v pass and of
        the JVP pass.
        """
        x = self.normalize_action(batch["action"].to(self._device).float())  # (B, pred_horizon, A)
        cond = self.encode_observation(batch["images"], batch["qpos"])  # (B, obs_horizon, cond_dim), with gradients
        e = torch.randn_like(x)
        t, r = self._sample_tr(x)
        _, t_view = self._broadcast_batch_time(t, x)
        z_t = (1 - t_view) * x + t_view * e
        error = self._model_velocity(z_t, r, t, cond) - (e - x)
        if self.loss_space == "data":
            error = error * t_view
        return self._masked_mean(self._elementwise_loss(error), batch.get("action_is_pad"))

    def _sample_one_step(self, z: torch.Tensor, cond: torch.Tensor, r=0.0, t=1.0) -> torch.Tensor:
        """z_r = z_t - (t - r) * u(z_t, r, t | cond); the defaults jump from noise straight to data."""
        r_batch, r_view = self._broadcast_batch_time(r, z)
        t_batch, t_view = self._broadcast_batch_time(t, z)
        return z - (t_view - r_view) * self.average_velocity(z, r_batch, t_batch, cond)

    @torch.inference_mode()
    def sample_actions(self, cond: torch.Tensor, num_steps: int | None = None, noise: torch.Tensor | None = None):
        """`num_steps` (default `inference_steps`) mean-velocity steps on linspace(1, 0):
        cond (B, obs_horizon, cond_dim) -> normalized actions (B, pred_horizon, A)."""
        z = self._initial_noise(cond.shape[0], cond, noise)
        grid = torch.linspace(1.0, 0.0, steps=(num_steps or self.inference_steps) + 1)
        for t, r in zip(grid[:-1], grid[1:]):
            z = self._sample_one_step(z, cond, r=r, t=t)
        return z
