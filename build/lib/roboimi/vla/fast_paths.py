"""Optional fast paths that leave the weights, the checkpoint layout and the objective unchanged.

* Fused scaled-dot-product attention (flash / memory-efficient kernels) outside the iMF JVP, which always
  runs on the math backend because fused kernels have no forward-mode derivative.
* bf16 autocast around forward passes (`train.bf16_autocast`, `eval.bf16_autocast`).
* torch.compile of the action head for rollouts (`eval.compile_head`).
"""
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention_backends(fused_sdpa, device: torch.device):
    """`fused_sdpa`: true, false or 'auto' (fused on CUDA only). False pins every attention to the math kernel."""
    if fused_sdpa not in (True, False, "auto"):
        raise ValueError(f"fused_sdpa={fused_sdpa!r}: use true, false or auto.")
    use_fused = device.type == "cuda" if fused_sdpa == "auto" else fused_sdpa
    return nullcontext() if use_fused else sdpa_kernel(SDPBackend.MATH)


def bf16_autocast(enabled: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def compile_head(agent) -> None:
    """Compile the head in place (nn.Module.compile keeps its parameters and state-dict keys).

    For inference only: torch.func.jvp, used by the iMF loss, does not trace through a compiled module.
    """
    agent.noise_pred_net.compile()
