"""Action heads: map a noisy action chunk, time and observation tokens to a velocity, noise or sample chunk.

* `Transformer1D`: DDPM denoising transformer of the baseline policy (noise or sample prediction).
* `IMFTransformer1D`: average-velocity head of the improved-MeanFlow policy (AttnRes backbone by default).
"""
from roboimi.vla.models.heads.imf_transformer1d import IMFTransformer1D
from roboimi.vla.models.heads.transformer1d import Transformer1D

__all__ = ['IMFTransformer1D', 'Transformer1D']
