"""Which search answers are recovered models: the report's stages and the int8 splits read it."""

from __future__ import annotations

from tensorfold.calibration.budget_search import Trial, answer_recovered


def trial(ratio, within, unrefined=None, refused=None, start=None):
    return Trial(ratio, 100, 0.01, 0.0, within, unrefined_error=unrefined, refused_error=refused, start=start)


def test_a_warm_start_carries_the_training_of_the_candidate_it_started_from():
    """A warm-started candidate is factorized from a recovered one: its weights are trained even
    where its own recovery was not kept (a resumed PP-OCR cls search wrote such a 1.28x candidate
    and said "the unrecovered answer is written")."""
    assert trial(1.2, True, unrefined=0.1).recovered  # its own recovery kept
    assert not trial(1.2, True, unrefined=0.1, refused=0.2, start="cold").recovered
    assert trial(1.3, True, unrefined=0.03, refused=0.07, start="warm").recovered
    assert not trial(1.1, True).recovered  # never refined: the plain search's answer
    assert answer_recovered([trial(1.1, True), trial(1.2, True, 0.1), trial(1.3, True, 0.03, 0.07, "warm")])
    assert not answer_recovered([trial(1.1, True), trial(1.2, False, 0.1, 0.2, "cold")])
