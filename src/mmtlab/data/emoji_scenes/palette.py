"""The small named colour palette shared by backgrounds, sprite colour names and captions.

Names are what a caption writer would say ("a blue background", "a red apple"); RGB values are
mid-saturation so that a noisy background still reads as its name. Nearest-name lookups happen in
CIE Lab, where Euclidean distance roughly follows perceived difference (in RGB, dark blue would be
nearer to black than to blue).
"""

from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (250, 215, 45),
    "green": (60, 165, 70),
    "blue": (45, 100, 215),
    "purple": (135, 70, 185),
    "pink": (245, 145, 190),
    "brown": (125, 80, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "gray": (135, 135, 135),
    "teal": (25, 145, 145),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8/float sRGB in 0..255 -> [..., 3] CIE Lab (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE_LAB = srgb_to_lab(np.array(list(COLORS.values())))


def nearest_color_index(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] sRGB -> [...] index into COLOR_NAMES of the perceptually nearest palette colour."""
    lab = srgb_to_lab(rgb)
    d = ((lab[..., None, :] - _PALETTE_LAB) ** 2).sum(-1)
    return d.argmin(-1)


def nearest_color_name(rgb: tuple[int, int, int] | np.ndarray) -> str:
    return COLOR_NAMES[int(nearest_color_index(np.asarray(rgb)))]
