"""Real photographs for image benchmarks: disjoint training and held-out photos, crops as the
model's own preprocessing makes them."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.bench.photos import HELD_PHOTOS, IMAGENET_MEAN, IMAGENET_STD, TRAIN_PHOTOS, photo_crops


def test_training_and_held_out_photos_are_disjoint():
    assert len(TRAIN_PHOTOS) >= 10 and len(HELD_PHOTOS) >= 10
    assert not set(TRAIN_PHOTOS) & set(HELD_PHOTOS)


@pytest.mark.network
def test_crops_are_normalized_padded_and_repeatable():
    crops = photo_crops(TRAIN_PHOTOS, 12, seed=0, size=96)
    assert crops.shape == (12, 3, 96, 96) and crops.dtype == np.float32
    assert np.array_equal(crops, photo_crops(TRAIN_PHOTOS, 12, seed=0, size=96))
    assert not np.array_equal(crops, photo_crops(TRAIN_PHOTOS, 12, seed=1, size=96))
    pixels = crops * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]  # back to 0..1
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # the longer side fills the square; the padding (zeros after normalization) is at the bottom right
    assert all(np.any(c[:, -1, :] != 0) or np.any(c[:, :, -1] != 0) for c in crops)
