from types import SimpleNamespace

import pytest

from tensorfold.search.pareto import dominates, front, hypervolume, normalize


def _trial(number, values, constraints=(), state="COMPLETE"):
    return SimpleNamespace(
        number=number,
        values=list(values),
        state=SimpleNamespace(name=state),
        user_attrs={"constraints": list(constraints)},
    )


def test_hypervolume_hand_cases():
    assert hypervolume([[0.5]], [1.0]) == pytest.approx(0.5)
    assert hypervolume([[0.5, 0.5]], [1.0, 1.0]) == pytest.approx(0.25)
    # two points: union of [0.2,1]x[0.6,1] and [0.6,1]x[0.2,1] = 0.32 + 0.32 - 0.16
    assert hypervolume([[0.2, 0.6], [0.6, 0.2]], [1.0, 1.0]) == pytest.approx(0.48)
    # a dominated point adds nothing; a point outside the box adds nothing
    assert hypervolume([[0.2, 0.6], [0.6, 0.2], [0.7, 0.7], [1.5, 0.0]], [1.0, 1.0]) == pytest.approx(0.48)
    assert hypervolume([[0.5, 0.5, 0.5]], [1, 1, 1]) == pytest.approx(0.125)
    assert hypervolume([], [1, 1]) == 0.0


def test_front_keeps_feasible_non_dominated_points_of_mixed_directions():
    objectives = ("params", "accuracy")  # minimize, maximize
    trials = [
        _trial(0, [100, 0.90]),
        _trial(1, [50, 0.85]),
        _trial(2, [60, 0.80]),  # 2 is dominated by 1
        _trial(3, [10, 0.99], constraints=[0.1]),  # infeasible
        _trial(4, [5, 0.1], state="FAIL"),
    ]
    assert [t.number for t in front(trials, objectives)] == [1, 0]
    assert dominates([1, 1], [1, 2]) and not dominates([1, 1], [1, 1])


def test_normalize_makes_every_objective_a_share_to_minimize():
    base = {"params": 200, "latency": 4.0, "accuracy": 0.9}
    assert normalize([50, 2.0, 0.85, 0.1], ("params", "latency", "accuracy", "error"), base) == pytest.approx(
        [0.25, 0.5, 0.05, 0.1]
    )


def test_an_error_axis_shows_the_original_at_error_zero():
    """The front's "original" point has error 0, which a log axis cannot show: symlog, linear below
    the smallest non-zero error."""
    from tensorfold.search.pareto import error_scale

    assert error_scale([0.01, 0.2]) == ("log", {})
    assert error_scale([0.0, 0.01, 0.2]) == ("symlog", {"linthresh": 0.01})
    assert error_scale([0.0]) == ("linear", {})
