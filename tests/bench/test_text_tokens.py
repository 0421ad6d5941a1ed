"""Sentence inputs for BERT-style encoders: real prose, each sentence once, draws kept apart."""

from __future__ import annotations

import numpy as np

from tensorfold.bench.text_tokens import ALL_LICENCES, LICENCES, sentences, token_samples


def test_the_pool_holds_each_sentence_once_and_grows_with_more_licences():
    base, more = sentences(), sentences(ALL_LICENCES)
    assert len(base) == len(set(base)) > 400 and len(more) == len(set(more)) > len(base)
    assert set(base) <= set(more) and all(30 < len(s) < 400 for s in more)
    assert LICENCES == ALL_LICENCES[: len(LICENCES)]


def test_draws_with_one_seed_and_different_skips_share_no_sentence():
    first, rest = token_samples(40, 0, length=32), token_samples(60, 0, length=32, skip=40)
    assert first["input_ids"].shape == (40, 32) and rest["attention_mask"].shape == (60, 32)
    rows = {tuple(r) for r in first["input_ids"]}
    assert not rows & {tuple(r) for r in rest["input_ids"]}
    assert np.all(first["input_ids"][:, 0] == 101)  # [CLS] opens every sentence


def test_a_draw_past_the_licences_goes_on_into_python_docs_and_leaves_earlier_draws_alone():
    pool = len(sentences())
    inside = token_samples(30, 0, length=16, skip=pool - 30)
    past = token_samples(60, 0, length=16, skip=pool - 30)  # the same 30, then 30 doc sentences
    assert np.array_equal(past["input_ids"][:30], inside["input_ids"])
    rows = {tuple(r) for r in past["input_ids"][30:]}
    assert len(rows) == 30 and not rows & {tuple(r) for r in inside["input_ids"]}
