from roboimi.vla.models.backbones.resnet_diffusion import ResNetDiffusionBackbone

__all__ = ["ResNetDiffusionBackbone"]
