"""Natural images for label-free runs, made offline from scikit-learn's two sample photos
(china.jpg, flower.jpg): random crops of 30-100 % of a photo's side, resized, optionally
mirrored, normalised per channel."""
from __future__ import annotations

import numpy as np


def photo_crops(n: int, chw: tuple[int, int, int], mean=(0.5,), std=(0.5,), seed: int = 0) -> np.ndarray:
    """(n, C, H, W) float32; C = 1 gives grayscale. mean / std: one value, or one per channel."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    c, h, w = chw
    rng = np.random.default_rng(seed)
    images = load_sample_images().images
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        img = images[i % len(images)]
        scale = rng.uniform(0.3, 1.0)
        ch, cw = int(img.shape[0] * scale), int(img.shape[1] * scale)
        y, x = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = img[y:y + ch, x:x + cw]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        a = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((w, h)).convert("L" if c == 1 else "RGB"),
                       np.float32) / 255.0
        a = a[None] if c == 1 else a.transpose(2, 0, 1)
        out[i] = (a - m) / s
    return out
