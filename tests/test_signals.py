"""signals.held: Ctrl-C and SIGTERM wait out a block that must not be cut, and come through again
inside it where asked, in the order they came."""

from __future__ import annotations

import signal

import pytest

from tensorfold import signals


def test_a_held_signal_is_raised_when_the_block_ends():
    steps, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal, still inside")
        steps.append("never reached")
    assert steps == ["after the signal, still inside"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is back


def test_a_trial_inside_a_hold_is_interrupted_at_once_and_the_waiting_signal_first():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with signals.held():  # Optuna's bookkeeping
            signal.raise_signal(signal.SIGINT)  # waits
            steps.append("bookkeeping finished")
            with signals.held(False):  # the next trial: the waiting signal comes first
                steps.append("never reached")
    assert steps == ["bookkeeping finished"]
    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            with signals.held(False):
                with signals.held():  # a journal append inside the trial: waits, then comes through
                    signal.raise_signal(signal.SIGINT)
                    steps.append("append finished")
                steps.append("never reached")
    assert steps == ["append finished"]


def test_nothing_waits_outside_a_hold():
    with pytest.raises(KeyboardInterrupt):
        with signals.held(False):  # no enclosing hold: nothing to let through, nothing changes
            signal.raise_signal(signal.SIGINT)
