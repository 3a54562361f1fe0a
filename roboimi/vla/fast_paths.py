"""Optional fast paths that leave the weights, the checkpoint layout and the objective unchanged.

* Fused scaled-dot-product attention (flash / memory-efficient kernels) outside the iMF JVP, which always
  runs on the math backend because fused kernels have no forward-mode derivative.
* bf16 autocast around forward passes (`train.precision`, `eval.precision`): matmuls and convolutions in bf16,
  weights, optimizer state and EMA in fp32.
* For rollouts only (`eval.fuse_conv_bn`, `eval.channels_last`, `eval.compile_encoder`, `eval.compile_head`,
  applied by `apply_eval_fast_paths`): BatchNorm folded into the conv before it, channels-last convolutions,
  torch.compile of the vision encoders and of the action head. They change the acting agent in place and are
  never saved: the checkpoint on disk keeps its layout.
"""
from collections.abc import Mapping
from contextlib import nullcontext

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn_graph
from torch.nn.attention import SDPBackend, sdpa_kernel

EVAL_FAST_PATH_KEYS = ("fuse_conv_bn", "channels_last", "compile_encoder", "compile_head")


def attention_backends(fused_sdpa, device: torch.device):
    """`fused_sdpa`: true, false or 'auto' (fused on CUDA only). False pins every attention to the math kernel."""
    if fused_sdpa not in (True, False, "auto"):
        raise ValueError(f"fused_sdpa={fused_sdpa!r}: use true, false or auto.")
    use_fused = device.type == "cuda" if fused_sdpa == "auto" else fused_sdpa
    return nullcontext() if use_fused else sdpa_kernel(SDPBackend.MATH)


PRECISIONS = ("fp32", "bf16")


def precision_autocast(precision: str, device: torch.device):
    """`precision`: 'fp32' (no autocast) or 'bf16' (autocast to bf16 on `device`; the weights stay fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {list(PRECISIONS)}.")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compile_head(agent) -> None:
    """Compile the head in place (nn.Module.compile keeps its parameters and state-dict keys).

    For inference only: torch.func.jvp, used by the iMF loss, does not trace through a compiled module.
    """
    agent.noise_pred_net.compile()


def compile_encoder(agent) -> None:
    """Compile the vision encoders in place (nn.Module.compile), for inference. The first call compiles (minutes
    on a CPU); a new batch size or image size compiles again."""
    agent.vision_backbone.compile()


def fuse_conv_batchnorm(agent) -> None:
    """Fold each BatchNorm2d of the vision encoders into the conv before it, in place (torch.fx fusion).

    With frozen statistics a BatchNorm is a per-channel affine map, so conv + BatchNorm equals one conv with scaled
    weights and a bias (within float rounding) and the normalization pass over every feature map goes away. Each
    conv trunk (the outermost nn.Sequential holding a BatchNorm2d) becomes a torch.fx GraphModule whose state-dict
    keys differ: fuse only an agent that acts, never one that is trained further or saved. GroupNorm trunks stay.
    """
    if agent.training:
        raise RuntimeError("fuse_conv_batchnorm folds the BatchNorm running statistics: call agent.eval() first.")

    def fuse_trunks(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Sequential) and any(isinstance(m, nn.BatchNorm2d) for m in child.modules()):
                setattr(module, name, fuse_conv_bn_graph(child, inplace=True))
            else:
                fuse_trunks(child)

    fuse_trunks(agent.vision_backbone)


def use_channels_last(agent) -> None:
    """Store the vision encoders' conv weights channels-last (NHWC), in place.

    oneDNN's CPU convolutions run natively on NHWC; a conv whose weight is NHWC takes its input NHWC too, so the
    whole trunk stays in that layout (the camera frames of a rollout already arrive as HWC).
    """
    agent.vision_backbone.to(memory_format=torch.channels_last)


def apply_eval_fast_paths(agent, eval_cfg: Mapping) -> None:
    """Apply the `eval.<key>` switches of EVAL_FAST_PATH_KEYS to an agent in eval mode, in this order: BatchNorm
    fusion, channels-last, compiled encoders, compiled head. Each switch must be true or false."""
    for key in EVAL_FAST_PATH_KEYS:
        if not isinstance(eval_cfg[key], bool):
            raise ValueError(f"eval.{key}={eval_cfg[key]!r}: use true or false.")
    if eval_cfg["fuse_conv_bn"]:
        fuse_conv_batchnorm(agent)
    if eval_cfg["channels_last"]:
        use_channels_last(agent)
    if eval_cfg["compile_encoder"]:
        compile_encoder(agent)
    if eval_cfg["compile_head"]:
        compile_head(agent)
