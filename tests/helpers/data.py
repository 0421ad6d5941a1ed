"""Data the tests share: image-like samples, and the marker for tests that need Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tensorfold.datasets import FASHION_MNIST_ROOT

needs_data = pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT).is_dir(),
    reason="needs Fashion-MNIST from Debian's dataset-fashion-mnist "
    "(apt-get install dataset-fashion-mnist; .ci/run does)",
)


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Low-frequency images with a bright blob (correlated pixels, as real images have), (n, 1, 28, 28)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 1, 7, 7)).astype(np.float32)
    img = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)
    yy, xx = np.mgrid[:28, :28]
    centre = rng.integers(8, 20, size=(n, 2))
    blob = np.exp(-((yy[None] - centre[:, :1, None]) ** 2 + (xx[None] - centre[:, 1:, None]) ** 2) / 30.0)
    return np.clip(0.5 * img + blob[:, None], 0, 1).astype(np.float32)
