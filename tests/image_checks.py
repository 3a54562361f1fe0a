"""Pixel counts for tests of rendered images (the red cube, coloured paths and legend swatches)."""
import numpy as np


def red_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., c].astype(int) for c in range(3))
    return int(np.sum((r > 150) & (g < 60) & (b < 60)))


def pixels_near(image: np.ndarray, rgba, tolerance: int = 60) -> int:
    """Pixels within `tolerance` (per channel) of an rgba colour in [0, 1]; shading darkens, so be generous."""
    target = np.array([255 * c for c in rgba[:3]])
    return int(np.sum(np.all(np.abs(image.astype(int) - target) < tolerance, axis=-1)))
