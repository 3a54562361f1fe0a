"""Pieces shared by the action heads: base class, time embedding, time broadcasting, causal masks,
weight init and the weight-decay grouping (diffusion_policy conventions)."""
import math
from numbers import Number

import torch
from torch import nn


class ModuleAttrMixin(nn.Module):
    """nn.Module with `device` / `dtype` properties read from its first parameter.

    `_dummy_variable` guarantees a parameter exists even before any layer is built; it is a
    state-dict key, so checkpoints keep it and strict loading expects it. It never takes part in a
    forward pass, so it does not require grad (DDP would otherwise wait for its gradient).
    """

    def __init__(self):
        super().__init__()
        self._dummy_variable = nn.Parameter(torch.empty(0), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parameters())).dtype


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a scalar per sample: (B,) -> (B, dim), sin half first.

    Frequencies exp(-k·ln(10000)/(half-1)), k = 0 … half-1. Integer inputs (DDPM steps) are embedded
    in the default float dtype; float inputs keep their own dtype.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=x.device, dtype=dtype) * -scale)
        angles = x[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


def expand_time_to_batch(value, batch_size: int, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A time / diffusion step given as a Python number, a 0-d, (1,) or (B,) tensor -> (B,) tensor.

    With `dtype=None` the value keeps its own dtype (integer DDPM steps stay integers).
    """
    if isinstance(value, Number):
        value = torch.tensor([value], dtype=dtype, device=device)
    elif not torch.is_tensor(value):
        raise TypeError(f'Time input must be a number or a tensor, got {type(value).__name__}.')
    elif value.ndim == 0:
        value = value[None]
    elif value.ndim > 1:
        raise ValueError(
            f'Time input must be a scalar, a (1,) or a (B,) tensor, got shape {tuple(value.shape)}. '
            'Flatten it to one value per sample.'
        )
    return value.to(device=device, dtype=dtype or value.dtype).expand(batch_size)


def additive_attention_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean "may attend" matrix -> float mask for nn.Transformer / SDPA: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float('-inf'))


def causal_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size, size) additive mask: token i sees tokens j <= i."""
    return additive_attention_mask(torch.ones(size, size, dtype=torch.bool, device=device).tril())


def causal_memory_mask(n_tokens: int, n_cond_tokens: int, n_time_tokens: int) -> torch.Tensor:
    """(n_tokens, n_cond_tokens) additive mask: action i sees cond token s iff i >= s - n_time_tokens.

    The condition sequence starts with `n_time_tokens` time tokens, so observation step i sits at
    cond position i + n_time_tokens and action i may look at observations up to step i.
    """
    i, s = torch.meshgrid(torch.arange(n_tokens), torch.arange(n_cond_tokens), indexing='ij')
    return additive_attention_mask(i >= s - n_time_tokens)


def build_encoder_decoder(
    n_emb: int, n_head: int, n_layer: int, p_drop_attn: float, n_cond_layers: int, has_cond_tokens: bool
) -> tuple[nn.Module, nn.Module | None]:
    """diffusion_policy trunk: (encoder, decoder) with a condition sequence, (encoder, None) without.

    With condition tokens the encoder is an MLP (or `n_cond_layers` transformer layers) over the
    condition and the decoder runs `n_layer` layers over the action tokens; without, the encoder
    alone runs `n_layer` layers (encoder-only / BERT).
    """
    layer_kwargs = dict(
        d_model=n_emb,
        nhead=n_head,
        dim_feedforward=4 * n_emb,
        dropout=p_drop_attn,
        activation='gelu',
        batch_first=True,
        norm_first=True,  # pre-norm, for training stability
    )
    if not has_cond_tokens:
        encoder_layer = nn.TransformerEncoderLayer(**layer_kwargs)
        return nn.TransformerEncoder(encoder_layer, num_layers=n_layer, enable_nested_tensor=False), None
    if n_cond_layers > 0:
        encoder_layer = nn.TransformerEncoderLayer(**layer_kwargs)
        encoder = nn.TransformerEncoder(encoder_layer, num_layers=n_cond_layers, enable_nested_tensor=False)
    else:
        encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
    decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_kwargs), num_layers=n_layer)
    return encoder, decoder


def run_encoder_decoder(
    head: nn.Module,
    time_tokens: list[torch.Tensor],
    sample_tokens: torch.Tensor,
    obs_tokens: torch.Tensor | None,
) -> torch.Tensor:
    """Forward of the trunk built by `build_encoder_decoder`, using the head's drop / pos_emb /
    cond_pos_emb / encoder / decoder / mask / memory_mask.

    time_tokens: list of (B, 1, D); sample_tokens: (B, horizon, D); obs_tokens: None or (B, To, D)
    -> (B, horizon, D), before the final norm.
    """
    if head.encoder_only:
        x = torch.cat(time_tokens + [sample_tokens], dim=1)
        x = head.drop(x + head.pos_emb[:, : x.shape[1], :])
        # is_causal: the mask is causal_mask's, and saying so spares torch comparing it on the host every call.
        x = head.encoder(src=x, mask=head.mask, is_causal=head.mask is not None)
        return x[:, len(time_tokens):, :]
    cond_tokens = time_tokens if obs_tokens is None else time_tokens + [obs_tokens]
    memory = torch.cat(cond_tokens, dim=1)  # (B, T_cond, D)
    memory = head.encoder(head.drop(memory + head.cond_pos_emb[:, : memory.shape[1], :]))
    x = head.drop(sample_tokens + head.pos_emb[:, : sample_tokens.shape[1], :])
    return head.decoder(
        tgt=x, memory=memory, tgt_mask=head.mask, memory_mask=head.memory_mask, tgt_is_causal=head.mask is not None
    )


# Modules that hold no parameters of their own (or only children handled separately) in both heads.
PARAMETER_FREE_MODULES = (
    nn.Dropout,
    SinusoidalPosEmb,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.ModuleList,
    nn.Mish,
    nn.Sequential,
)


def init_transformer_module(module: nn.Module, head: nn.Module, ignored_types: tuple = ()) -> None:
    """diffusion_policy init of one module, meant for `head.apply`.

    Linear / Embedding weights and MHA input projections ~ N(0, 0.02), biases 0, LayerNorm 1 / 0, the
    head's own `pos_emb` / `cond_pos_emb` ~ N(0, 0.02). A module type nobody accounted for raises, so a
    new layer can never silently keep PyTorch's default init.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        for name in ('in_proj_weight', 'q_proj_weight', 'k_proj_weight', 'v_proj_weight'):
            weight = getattr(module, name)
            if weight is not None:
                nn.init.normal_(weight, mean=0.0, std=0.02)
        for name in ('in_proj_bias', 'bias_k', 'bias_v'):
            bias = getattr(module, name)
            if bias is not None:
                nn.init.zeros_(bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif module is head:
        for pos_emb in (module.pos_emb, module.cond_pos_emb):
            if pos_emb is not None:
                nn.init.normal_(pos_emb, mean=0.0, std=0.02)
    elif isinstance(module, PARAMETER_FREE_MODULES + tuple(ignored_types)):
        pass
    else:
        raise RuntimeError(f'Unaccounted module {module}')


def weight_decay_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_weight_modules: tuple = (),
    no_decay_param_names: tuple = (),
) -> list[dict]:
    """AdamW groups [decay, no-decay], each sorted by full parameter name (diffusion_policy rule).

    Decay: weights of Linear / MultiheadAttention. No decay: every bias, weights of LayerNorm / Embedding
    and of `no_decay_weight_modules`, parameters named in `no_decay_param_names`, and the root's
    `pos_emb`, `cond_pos_emb` and `_dummy_variable`. Every parameter must land in exactly one group.
    """
    decay_modules = (nn.Linear, nn.MultiheadAttention)
    no_decay_modules = (nn.LayerNorm, nn.Embedding) + tuple(no_decay_weight_modules)
    decay, no_decay = set(), set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f'{module_name}.{param_name}' if module_name else param_name
            if param_name.endswith('bias') or param_name.startswith('bias') or param_name in no_decay_param_names:
                no_decay.add(full_name)
            elif param_name.endswith('weight') and isinstance(module, decay_modules):
                decay.add(full_name)
            elif param_name.endswith('weight') and isinstance(module, no_decay_modules):
                no_decay.add(full_name)

    params = dict(model.named_parameters())
    no_decay |= {name for name in ('pos_emb', 'cond_pos_emb', '_dummy_variable') if name in params}
    assert not decay & no_decay, f'parameters {sorted(decay & no_decay)} are in both decay and no-decay groups'
    assert params.keys() == decay | no_decay, (
        f'parameters {sorted(params.keys() - (decay | no_decay))} are in neither decay nor no-decay group'
    )
    return [
        {'params': [params[name] for name in sorted(decay)], 'weight_decay': weight_decay},
        {'params': [params[name] for name in sorted(no_decay)], 'weight_decay': 0.0},
    ]
