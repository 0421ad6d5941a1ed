"""Realistic inputs for OCR models: printed words on light, slightly noisy backgrounds (Pillow).

Random normal inputs say little about a text detector or recognizer; these images look like what
such models are run on: lines of dark text in several sizes, positions and colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "invoice total amount date number customer address street city phone email order item "
    "quantity price discount payment account balance reference delivery shipping receipt "
    "tensor model layer output input rank budget error speed latency 2026 0415 17:30 EUR USD "
    "No. ID#4471 page 3/12 Hello World Station Platform Exit Open Closed Monday Friday"
).split()


def _line(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def _background(rng, size):
    h, w = size
    base = rng.integers(200, 256, size=3)
    noise = rng.normal(0, 6, size=(h, w, 1))
    return Image.fromarray(np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8), "RGB")


def page_images(n: int, size: tuple[int, int] = (320, 320), seed: int = 0) -> np.ndarray:
    """n uint8 (H, W, 3) pages with several text lines each (detector inputs)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = _background(rng, size)
        draw = ImageDraw.Draw(img)
        y = int(rng.integers(4, 20))
        while y < size[0] - 20:
            font_size = int(rng.integers(12, 30))
            font = ImageFont.load_default(size=font_size)
            colour = tuple(int(c) for c in rng.integers(0, 90, size=3))
            draw.text(
                (int(rng.integers(2, size[1] // 3)), y), _line(rng, int(rng.integers(1, 5))), fill=colour, font=font
            )
            y += font_size + int(rng.integers(6, 30))
        out.append(np.asarray(img))
    return np.stack(out)


def line_images(
    n: int, size: tuple[int, int] = (48, 320), seed: int = 0, flip_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 (H, W, 3) single text lines (recognizer/direction-classifier inputs) and whether
    each was turned by 180 degrees."""
    rng = np.random.default_rng(seed)
    out, flipped = [], []
    for _ in range(n):
        img = _background(rng, size)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=int(size[0] * rng.uniform(0.5, 0.75)))
        colour = tuple(int(c) for c in rng.integers(0, 90, size=3))
        draw.text(
            (int(rng.integers(2, 12)), int(size[0] * 0.1)), _line(rng, int(rng.integers(1, 4))), fill=colour, font=font
        )
        turn = bool(rng.random() < flip_share)
        if turn:
            img = img.rotate(180)
        out.append(np.asarray(img))
        flipped.append(turn)
    return np.stack(out), np.array(flipped)


def gray_line_inputs(n: int, seed: int = 0, size: tuple[int, int] = (64, 256)) -> np.ndarray:
    """Model-ready inputs for ddddocr's CRNN recognizer (its preprocessing): grayscale text lines
    64 high, scaled to [0, 1], float32 (N, 1, H, W)."""
    lines, _ = line_images(n, size, seed)
    return (lines.astype(np.float32).mean(axis=3) / 255.0)[:, None]


def table_images(n: int, size: tuple[int, int] = (488, 488), seed: int = 0) -> np.ndarray:
    """n uint8 (H, W, 3) ruled tables of 4-8 rows and 2-4 columns, a word or number in each cell
    (table-structure model inputs)."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        img = _background(rng, size)
        draw = ImageDraw.Draw(img)
        rows, cols = int(rng.integers(4, 9)), int(rng.integers(2, 5))
        x0, y0 = int(rng.integers(8, 30)), int(rng.integers(8, 40))
        tw, th = w - x0 - int(rng.integers(8, 30)), h - y0 - int(rng.integers(8, 40))
        ink = tuple(int(c) for c in rng.integers(0, 70, size=3))
        for r in range(rows + 1):
            draw.line([(x0, y0 + r * th // rows), (x0 + tw, y0 + r * th // rows)], fill=ink, width=2)
        for c in range(cols + 1):
            draw.line([(x0 + c * tw // cols, y0), (x0 + c * tw // cols, y0 + th)], fill=ink, width=2)
        font = ImageFont.load_default(size=int(rng.integers(12, 18)))
        for r in range(rows):
            for c in range(cols):
                draw.text((x0 + c * tw // cols + 6, y0 + r * th // rows + 6), _line(rng, 1), fill=ink, font=font)
        out.append(np.asarray(img))
    return np.stack(out)


def to_nchw(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), scaled to [0, 1] then normalized."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def ocr_inputs(name: str, n: int, seed: int = 0, page: int = 320) -> np.ndarray:
    """Model-ready inputs for a PP-OCR model (RapidOCR's preprocessing): `page`-square pages
    normalized as ImageNet for the detector ("det"), upright text lines at 0.5/0.5 for the direction
    classifier ("cls", 48x192) and the recognizer ("rec", 48x320)."""
    if name == "det":
        return to_nchw(page_images(n, (page, page), seed), *IMAGENET_MEAN_STD)
    images, _ = line_images(n, (48, 192) if name == "cls" else (48, 320), seed)
    return to_nchw(images, 0.5, 0.5)
