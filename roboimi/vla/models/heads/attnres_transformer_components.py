"""Building blocks of the AttnRes transformer backbone used by IMFTransformer1D (attnres_full).

A backbone is a stack of pre-norm sub-layers (attention, SwiGLU, attention, SwiGLU, ...). Instead of a
residual stream, every sub-layer reads a learned softmax mixture over depth of the embedding and all
earlier sub-layer outputs (Attention Residuals, "Full" variant), and the backbone returns the plain sum
of all those states. Attention is grouped-query self-attention with interleaved RoPE.

Names, defaults and state-dict keys follow the diffusion_policy IMF-AttnRes head, so checkpoints load
unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn

from roboimi.vla.models.heads.utils import causal_mask


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision inputs are upcast to float32 for the numerically sensitive steps; float64 stays
    # float64 so that double-precision checks (finite differences) are not limited by float32.
    return torch.promote_types(x.dtype, torch.float32)


def _rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim, computed in >= float32 and cast back to x's dtype."""
    x_wide = x.to(_compute_dtype(x))
    return (x_wide * torch.rsqrt(x_wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_normalize(x, self.eps) * self.weight


class RMSNormNoWeight(nn.Module):
    """RMSNorm without a gain: the key normaliser of AttnResOperator (no parameters, no buffers)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms_normalize(x, self.eps)


def precompute_rope_freqs(dim: int, max_seq_len: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Complex rotations exp(i·p·f_k), f_k = theta^(-2k/dim): complex64 (max_seq_len, dim/2)."""
    if dim % 2 != 0:
        raise ValueError(f'RoPE requires an even head dimension, got {dim}.')
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x_2k, x_2k+1) of x (B, T, heads, d_h) by freqs (T, d_h/2).

    Interleaved (GPT-J / LLaMA) pairing, not rotate-half: checkpoints depend on which one is used.
    """
    x_pairs = torch.view_as_complex(x.to(_compute_dtype(x)).reshape(*x.shape[:-1], -1, 2))
    rotated = x_pairs * freqs[None, :, None, :]
    return torch.view_as_real(rotated).reshape(x.shape).to(x.dtype)


class GroupedQuerySelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on q/k and n_kv_heads <= n_heads shared key/value heads."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f'd_model={d_model} must be divisible by n_heads={n_heads}.')
        if n_heads % n_kv_heads != 0:
            raise ValueError(f'n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}.')
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_kv_groups = n_heads // n_kv_heads
        self.d_head = d_model // n_heads

        # attn_dropout holds p for the attention probabilities; the fused kernel applies it.
        self.attn_dropout = nn.Dropout(dropout)
        self.out_dropout = nn.Dropout(dropout)
        self.w_q = nn.Linear(d_model, n_heads * self.d_head, bias=False)
        self.w_k = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)
        self.w_v = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)
        self.w_o = nn.Linear(n_heads * self.d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor, rope_freqs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, D); mask: None or additive (1, 1, T, T) -> (B, T, D)
        batch, seq_len, _ = x.shape
        q = self.w_q(x).view(batch, seq_len, self.n_heads, self.d_head)
        k = self.w_k(x).view(batch, seq_len, self.n_kv_heads, self.d_head)
        v = self.w_v(x).view(batch, seq_len, self.n_kv_heads, self.d_head)

        freqs = rope_freqs[:seq_len]
        q = apply_rope(q, freqs)
        k = apply_rope(k, freqs)

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, d_h); k, v (B, K, T, d_h)
        # enable_gqa: each group of n_heads / n_kv_heads query heads shares one key/value head.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout.p if self.training else 0.0,
            enable_gqa=self.n_kv_groups > 1,
        )
        out = out.transpose(1, 2).contiguous().view(batch, seq_len, self.d_model)
        return self.out_dropout(self.w_o(out))


class SwiGLUFFN(nn.Module):
    """w_down(silu(w_gate(x)) * w_up(x)); hidden width int(mult·d_model) rounded up to a multiple of 8."""

    def __init__(self, d_model: int, dropout: float = 0.0, mult: float = 2.667):
        super().__init__()
        self.d_ff = (int(mult * d_model) + 7) // 8 * 8
        self.w_gate = nn.Linear(d_model, self.d_ff, bias=False)
        self.w_up = nn.Linear(d_model, self.d_ff, bias=False)
        self.w_down = nn.Linear(self.d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w_down(F.silu(self.w_gate(x)) * self.w_up(x)))


class AttnResOperator(nn.Module):
    """Softmax mixture over depth: one learned pseudo-query scores RMS-normalised earlier states.

    Zero-initialised, so every operator starts as the uniform average of its sources.
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.pseudo_query = nn.Parameter(torch.zeros(d_model))
        self.key_norm = RMSNormNoWeight(eps)
        # Diagnostic only (may hold tensors created inside a torch.func transform); never part of state.
        self.last_depth_attention_weights = None

    def forward(self, sources: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        # sources: (N, B, T, D) -> (B, T, D); keys: key_norm(sources) when the caller already has them
        if keys is None:
            keys = self.key_norm(sources)
        logits = (keys * self.pseudo_query).sum(dim=-1)  # (N, B, T); no 1/sqrt(D) scale
        weights = torch.softmax(logits, dim=0)  # over depth, per token
        self.last_depth_attention_weights = weights.detach()
        # Values are the raw sources: normalising them would rescale the residual stream.
        return (weights.unsqueeze(-1) * sources).sum(dim=0)


class AttnResSubLayer(nn.Module):
    """Depth mixing -> RMSNorm -> attention or SwiGLU. Returns only the sub-layer output f(x)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        dropout: float,
        ffn_mult: float,
        eps: float,
        is_attention: bool,
    ):
        super().__init__()
        self.norm = RMSNorm(d_model, eps)
        self.attn_res = AttnResOperator(d_model, eps)
        if is_attention:
            self.fn = GroupedQuerySelfAttention(d_model, n_heads, n_kv_heads, dropout)
        else:
            self.fn = SwiGLUFFN(d_model, dropout, ffn_mult)
        self.is_attention = is_attention

    def forward(
        self,
        sources: torch.Tensor,
        rope_freqs: torch.Tensor,
        mask: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # sources, keys: (N, B, T, D) -> (B, T, D); keys as in AttnResOperator.forward
        normed = self.norm(self.attn_res(sources, keys))
        if self.is_attention:
            return self.fn(normed, rope_freqs, mask)
        return self.fn(normed)


class AttnResTransformerBackbone(nn.Module):
    """n_blocks x (attention, SwiGLU) AttnRes sub-layers; output = embedding + sum of all sub-layer outputs."""

    def __init__(
        self,
        d_model: int,
        n_blocks: int,
        n_heads: int,
        n_kv_heads: int,
        max_seq_len: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.667,
        eps: float = 1e-6,
        rope_theta: float = 10000.0,
        causal_attn: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            AttnResSubLayer(d_model, n_heads, n_kv_heads, dropout, ffn_mult, eps, is_attention=index % 2 == 0)
            for index in range(2 * n_blocks)
        )
        # Recomputable from the config, so kept out of checkpoints.
        self.register_buffer(
            'rope_freqs', precompute_rope_freqs(d_model // n_heads, max_seq_len, rope_theta), persistent=False
        )
        self.causal_attn = causal_attn
        # The sub-layers' key normaliser, applied once per state here (no parameters, so no checkpoint entry).
        self.key_norm = RMSNormNoWeight(eps)

    @staticmethod
    def _build_causal_mask(seq_len: int, device: torch.device) -> torch.Tensor:
        """(1, 1, T, T): -inf above the diagonal, 0 elsewhere."""
        return causal_mask(seq_len, device)[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D) -> (B, T, D)
        seq_len = x.shape[1]
        max_seq_len = self.rope_freqs.shape[0]
        if seq_len > max_seq_len:
            raise ValueError(
                f'Sequence of {seq_len} tokens exceeds max_seq_len={max_seq_len} of the RoPE table. '
                'Build the backbone with a larger max_seq_len (in IMFTransformer1D: n_obs_steps must '
                'cover every cond token and the sample must be at most horizon long).'
            )
        rope = self.rope_freqs[:seq_len]
        mask = self._build_causal_mask(seq_len, x.device) if self.causal_attn else None
        # Every later sub-layer reads each state's key: normalize a state once, when it is produced, rather than
        # once per reader (the same numbers; in the forward-mode JVP of training this was most of the head's time).
        outputs, keys = [x], [self.key_norm(x)]
        for layer in self.layers:
            outputs.append(layer(torch.stack(outputs, dim=0), rope, mask, torch.stack(keys, dim=0)))
            keys.append(self.key_norm(outputs[-1]))
        return torch.stack(outputs, dim=0).sum(dim=0)
