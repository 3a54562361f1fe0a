"""IMFTransformer1D: the average-velocity head u(z, r, t | cond) of the improved-MeanFlow policy.

Default backbone 'attnres_full': one token sequence [r, t, obs_1 … obs_To, action_1 … action_H] through
an AttnRes transformer (RoPE positions only, no learned positional embedding); the action positions are
read out. Any other `backbone_type` selects the diffusion_policy encoder-decoder transformer, adapted to
two time tokens.

Module names, defaults, error messages and state-dict keys match the diffusion_policy IMF-AttnRes head
(commit 185ed659), so its checkpoints load with strict=True.
"""
import torch
from torch import nn

from roboimi.vla.models.heads.attnres_transformer_components import (
    AttnResOperator,
    AttnResSubLayer,
    AttnResTransformerBackbone,
    GroupedQuerySelfAttention,
    RMSNorm,
    RMSNormNoWeight,
    SwiGLUFFN,
)
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

N_TIME_TOKENS = 2  # r and t

# AttnRes containers hold no parameters of their own; their children are initialised individually.
_ATTNRES_PARAMETER_FREE = (
    AttnResTransformerBackbone,
    AttnResSubLayer,
    GroupedQuerySelfAttention,
    SwiGLUFFN,
    RMSNormNoWeight,
)


class IMFTransformer1D(ModuleAttrMixin):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        horizon: int,
        n_obs_steps: int | None = None,
        cond_dim: int = 0,
        n_layer: int = 12,
        n_head: int = 8,
        n_emb: int = 768,
        p_drop_emb: float = 0.1,
        p_drop_attn: float = 0.1,
        causal_attn: bool = False,
        time_as_cond: bool = True,
        obs_as_cond: bool = False,
        n_cond_layers: int = 0,
        backbone_type: str = 'attnres_full',
        n_kv_head: int = 8,
        attn_res_ffn_mult: float = 2.667,
        attn_res_eps: float = 1e-6,
        attn_res_rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        if n_head < 1:
            raise ValueError(f'n_head must be >= 1, got {n_head}.')
        if n_kv_head < 1:
            raise ValueError(f'n_kv_head must be >= 1, got {n_kv_head}.')
        if n_emb % n_head != 0:
            raise ValueError(f'n_emb={n_emb} must be divisible by n_head={n_head}.')
        if n_head % n_kv_head != 0:
            raise ValueError(f'n_head={n_head} must be divisible by n_kv_head={n_kv_head}.')
        is_attnres = backbone_type == 'attnres_full'
        head_dim = n_emb // n_head
        if is_attnres and head_dim % 2 != 0:
            raise ValueError(
                'attnres_full uses RoPE, which requires an even per-head dimension. '
                f'Got n_emb={n_emb}, n_head={n_head}, head_dim={head_dim}.'
            )

        if n_obs_steps is None:
            n_obs_steps = horizon
        t_seq = horizon
        t_cond = N_TIME_TOKENS
        if not time_as_cond:
            t_seq += N_TIME_TOKENS
            t_cond -= N_TIME_TOKENS
        # The argument is ignored: conditioning on observations is implied by a condition vector.
        obs_as_cond = cond_dim > 0
        if obs_as_cond:
            assert time_as_cond, 'cond_dim > 0 needs time_as_cond=True (time tokens lead the condition sequence).'
            t_cond += n_obs_steps
        if is_attnres:
            if not time_as_cond:
                raise ValueError('attnres_full backbone requires time_as_cond=True.')
            if n_cond_layers != 0:
                raise ValueError('attnres_full backbone does not support n_cond_layers > 0.')

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None

        self.time_token_proj = None
        self.pos_emb = None
        self.cond_pos_emb = None
        self.encoder = None
        self.decoder = None
        self.attnres_backbone = None
        encoder_only = False
        if is_attnres:
            # One projection for both time tokens: r and t differ only by value and RoPE position.
            self.time_token_proj = nn.Linear(n_emb, n_emb)
            self.attnres_backbone = AttnResTransformerBackbone(
                d_model=n_emb,
                n_blocks=n_layer,
                n_heads=n_head,
                n_kv_heads=n_kv_head,
                max_seq_len=t_seq + t_cond,
                dropout=p_drop_attn,
                ffn_mult=attn_res_ffn_mult,
                eps=attn_res_eps,
                rope_theta=attn_res_rope_theta,
                causal_attn=causal_attn,
            )
            self.ln_f = RMSNorm(n_emb, eps=attn_res_eps)
        else:
            self.pos_emb = nn.Parameter(torch.zeros(1, t_seq, n_emb))
            encoder_only = t_cond == 0
            if not encoder_only:
                self.cond_pos_emb = nn.Parameter(torch.zeros(1, t_cond, n_emb))
            self.encoder, self.decoder = build_encoder_decoder(
                n_emb, n_head, n_layer, p_drop_attn, n_cond_layers, has_cond_tokens=not encoder_only
            )
            self.ln_f = nn.LayerNorm(n_emb)

        # attnres_full builds its causal mask inside the backbone; the vanilla masks are checkpoint state.
        if causal_attn and not is_attnres:
            self.register_buffer('mask', causal_mask(t_seq))
            if time_as_cond and obs_as_cond:
                self.register_buffer('memory_mask', causal_memory_mask(t_seq, t_cond, N_TIME_TOKENS))
            else:
                self.memory_mask = None
        else:
            self.mask = None
            self.memory_mask = None

        self.head = nn.Linear(n_emb, output_dim)

        self.T = t_seq
        self.T_cond = t_cond
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.cond_dim = cond_dim
        self.time_as_cond = time_as_cond
        self.obs_as_cond = obs_as_cond
        self.encoder_only = encoder_only
        self.backbone_type = backbone_type

        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, AttnResOperator):
            nn.init.zeros_(module.pseudo_query)
        else:
            init_transformer_module(module, self, ignored_types=_ATTNRES_PARAMETER_FREE)

    def get_optim_groups(self, weight_decay: float = 1e-3) -> list[dict]:
        return weight_decay_groups(
            self, weight_decay, no_decay_weight_modules=(RMSNorm,), no_decay_param_names=('pseudo_query',)
        )

    def _prepare_time_input(self, value, sample: torch.Tensor) -> torch.Tensor:
        """Number, 0-d, (1,) or (B,) tensor -> (B,) in the sample's dtype and device."""
        return expand_time_to_batch(value, sample.shape[0], sample.device, sample.dtype)

    def _require_cond(self, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            raise ValueError(f'cond is required when obs_as_cond=True for {self.backbone_type} backbone.')
        return cond

    def forward(self, sample: torch.Tensor, r, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, horizon, input_dim), r / t in [0, 1] (number, (1,) or (B,)),
        cond (B, n_obs_steps, cond_dim) -> average velocity (B, horizon, output_dim)."""
        dtype = self.input_emb.weight.dtype
        sample = sample.to(dtype)
        if cond is not None:
            cond = cond.to(dtype)
        r = self._prepare_time_input(r, sample)
        t = self._prepare_time_input(t, sample)
        if self.backbone_type == 'attnres_full':
            return self._forward_attnres_full(sample, r, t, cond)
        return self._forward_vanilla(sample, r, t, cond)

    def _forward_attnres_full(self, sample, r, t, cond):
        sample_tokens = self.input_emb(sample)  # (B, horizon, D)
        r_token = self.time_token_proj(self.time_emb(r)).unsqueeze(1)  # (B, 1, D)
        t_token = self.time_token_proj(self.time_emb(t)).unsqueeze(1)  # (B, 1, D)
        tokens = [r_token, t_token]
        if self.obs_as_cond:
            tokens.append(self.cond_obs_emb(self._require_cond(cond)))  # (B, To, D)
        tokens.append(sample_tokens)
        # RoPE positions run over the whole sequence: r = 0, t = 1, cond from 2, actions last.
        x = self.drop(torch.cat(tokens, dim=1))
        x = self.attnres_backbone(x)
        x = x[:, -sample_tokens.shape[1]:, :]  # (B, horizon, D)
        return self.head(self.ln_f(x))

    def _forward_vanilla(self, sample, r, t, cond):
        time_tokens = [self.time_emb(r).unsqueeze(1), self.time_emb(t).unsqueeze(1)]  # 2 x (B, 1, D)
        obs_tokens = self.cond_obs_emb(self._require_cond(cond)) if self.obs_as_cond else None
        x = run_encoder_decoder(self, time_tokens, self.input_emb(sample), obs_tokens)
        return self.head(self.ln_f(x))
