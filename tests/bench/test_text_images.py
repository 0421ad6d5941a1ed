"""Model-ready synthetic text inputs: the shapes, types and scales each real model's preprocessing gives."""

from __future__ import annotations

import numpy as np

from tensorfold.bench.text_images import gray_line_inputs, line_images


def test_gray_lines_are_ddddocr_inputs_of_the_colour_lines_of_the_same_seed():
    x = gray_line_inputs(3, seed=4)
    assert x.shape == (3, 1, 64, 256) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    colour, _ = line_images(3, (64, 256), seed=4)
    np.testing.assert_allclose(x[:, 0], colour.mean(axis=3) / 255.0, rtol=1e-6)
