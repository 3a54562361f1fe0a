"""Transformer1D: the DDPM denoising head of the baseline policy (it predicts the noise or the clean sample, as the
agent's prediction_type says).

diffusion_policy's TransformerForDiffusion: the condition sequence [time token, obs_1 … obs_To] goes
through a small encoder (an MLP by default) and becomes the memory of a transformer decoder over the
noisy action tokens. With time_as_cond=False it becomes an encoder-only (BERT-like) model whose first
token is the time step.
"""
import torch
from torch import nn

from roboimi.vla.models.heads.utils import (
    ModuleAttrMixin,
    SinusoidalPosEmb,
    build_encoder_decoder,
    causal_mask,
    causal_memory_mask,
    expand_time_to_batch,
    init_transformer_module,
    run_encoder_decoder,
    weight_decay_groups,
)


class Transformer1D(ModuleAttrMixin):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        horizon: int,
        n_obs_steps: int | None = None,
        cond_dim: int = 0,
        n_layer: int = 12,
        n_head: int = 12,
        n_emb: int = 768,
        p_drop_emb: float = 0.1,
        p_drop_attn: float = 0.1,
        causal_attn: bool = False,
        time_as_cond: bool = True,
        obs_as_cond: bool = False,
        n_cond_layers: int = 0,
    ) -> None:
        super().__init__()
        if n_obs_steps is None:
            n_obs_steps = horizon
        T = horizon
        T_cond = 1
        if not time_as_cond:
            T += 1
            T_cond -= 1
        # The argument is ignored: conditioning on observations is implied by a condition vector.
        obs_as_cond = cond_dim > 0
        if obs_as_cond:
            assert time_as_cond, 'cond_dim > 0 needs time_as_cond=True (the time token leads the condition sequence).'
            T_cond += n_obs_steps

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None

        encoder_only = T_cond == 0
        self.cond_pos_emb = None if encoder_only else nn.Parameter(torch.zeros(1, T_cond, n_emb))
        self.encoder, self.decoder = build_encoder_decoder(
            n_emb, n_head, n_layer, p_drop_attn, n_cond_layers, has_cond_tokens=not encoder_only
        )

        # Persistent: the masks are part of diffusion_policy checkpoints.
        if causal_attn:
            self.register_buffer('mask', causal_mask(T))
            if time_as_cond and obs_as_cond:
                self.register_buffer('memory_mask', causal_memory_mask(T, T_cond, n_time_tokens=1))
            else:
                self.memory_mask = None
        else:
            self.mask = None
            self.memory_mask = None

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)

        self.T = T
        self.T_cond = T_cond
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.cond_dim = cond_dim
        self.time_as_cond = time_as_cond
        self.obs_as_cond = obs_as_cond
        self.encoder_only = encoder_only

        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_transformer_module(module, self)

    def get_optim_groups(self, weight_decay: float = 1e-3) -> list[dict]:
        return weight_decay_groups(self, weight_decay)

    def forward(self, sample: torch.Tensor, timestep, cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, horizon, input_dim), timestep = DDPM step k (number, (1,) or (B,)),
        cond (B, n_obs_steps, cond_dim) -> predicted noise or sample (B, horizon, output_dim)."""
        timesteps = expand_time_to_batch(timestep, sample.shape[0], sample.device)
        time_token = self.time_emb(timesteps).unsqueeze(1)  # (B, 1, D)
        obs_tokens = None
        if self.obs_as_cond:
            if cond is None:
                raise ValueError('cond is required when obs_as_cond=True (the head was built with cond_dim > 0).')
            obs_tokens = self.cond_obs_emb(cond)  # (B, To, D)
        x = run_encoder_decoder(self, [time_token], self.input_emb(sample), obs_tokens)
        return self.head(self.ln_f(x))
