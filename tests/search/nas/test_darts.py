import numpy as np
import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas import darts
from tensorfold.search.nas.darts import darts_search
from tensorfold.search.nas.space import Genotype, NetConfig

CFG = NetConfig(channels=4, layers=3)


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32) * 0.1
    x[np.arange(n), 0, y, y] += 3.0  # a learnable signal: the label is where the bright pixel is
    return x, y


@pytest.mark.parametrize("order", [1, 2])
def test_first_and_second_order_search_move_alpha_and_derive(order):
    x, y = _data(128)
    res = darts_search(x, y, CFG, epochs=2, batch=32, order=order, guard="none", budget_s=300, progress=False)
    assert isinstance(res.genotype, Genotype) and res.epochs == 2 and res.steps == 2 * (64 // 32)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.peak_memory_mb < 4096


def test_earlystop_guard_returns_the_genotype_before_skips_dominate(monkeypatch):
    """DARTS+ criterion: once the normal cell holds SKIP_LIMIT skips, stop and keep the previous epoch's cell."""
    clean = Genotype(((("conv_3x3", 0), ("sep_conv_3x3", 1)),) * 3, ((("conv_3x3", 0), ("conv_3x3", 1)),) * 3)
    collapsed = Genotype(((("skip_connect", 0), ("skip_connect", 1)),) * 3, clean.reduce)
    sequence = iter([clean, clean, clean, collapsed, collapsed])
    monkeypatch.setattr(darts.SuperNet, "genotype", lambda self: next(sequence))
    x, y = _data(128)
    res = darts_search(x, y, CFG, epochs=10, batch=32, guard="earlystop", budget_s=300, progress=False)
    assert res.genotype == clean and res.epochs == 3
    assert "collapse guard" in res.stopped and res.history[-1]["skips_normal"] == 6
    sequence = iter([clean, clean, clean, collapsed, collapsed])
    unguarded = darts_search(x, y, CFG, epochs=4, batch=32, guard="none", budget_s=300, progress=False)
    assert unguarded.genotype == collapsed


def test_aux_skip_guard_decays_beta(monkeypatch):
    seen = []
    real = darts.SuperNet.genotype

    def spy(self):
        seen.append(self.beta[0])
        return real(self)

    monkeypatch.setattr(darts.SuperNet, "genotype", spy)
    x, y = _data(128)
    darts_search(x, y, CFG, epochs=3, batch=32, guard="aux-skip", budget_s=300, progress=False)
    assert seen[1:] == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_a_budget_below_three_short_epochs_is_refused():
    x, y = _data(2048)
    with pytest.raises(TensorfoldError, match="too small for DARTS here"):
        darts_search(x, y, CFG, epochs=1, batch=32, budget_s=0.01, progress=False)


def test_epochs_shrink_to_fit_the_budget(monkeypatch):
    """A budget that cannot hold three full epochs trains each epoch on a subset, says so, and ends
    within the budget (a clock that advances 1 s per reading stands in for slow steps)."""
    clock = iter(np.arange(0, 1e6, 1.0))
    monkeypatch.setattr(darts.time, "perf_counter", lambda: float(next(clock)))
    x, y = _data(512)  # 256 weight-training images: 32 steps of 8
    res = darts_search(x, y, CFG, epochs=50, batch=8, guard="none", budget_s=60.0, progress=False)
    assert "so 3 epochs fit the budget" in res.subset
    per_epoch = int(res.subset.split(" of ")[0].split()[-1]) // 8
    assert 10 <= per_epoch < 32 and res.epochs >= 3


def test_the_collapse_guard_catches_pools_as_well_as_skips():
    from tensorfold.search.nas.darts import collapse
    from tensorfold.search.nas.space import Genotype

    conv = (("sep_conv_3x3", 0), ("dil_conv_3x3", 1))
    reduce = (conv, conv, conv)
    healthy = Genotype((conv, (("skip_connect", 0), ("sep_conv_3x3", 1)), conv), reduce)
    skips = Genotype(((("skip_connect", 0), ("skip_connect", 1)), conv, conv), reduce)
    pools = Genotype(
        ((("max_pool_3x3", 0), ("avg_pool_3x3", 1)), (("max_pool_3x3", 0), ("sep_conv_3x3", 2)), conv), reduce
    )
    assert collapse(healthy) is None
    assert "2 skip connections" in collapse(skips)
    assert "3 of the normal cell's 6 edges parameter-free" in collapse(pools)
    assert collapse(pools, epoch=1) is None and "2 skip connections" in collapse(skips, epoch=1)
    # pools that recede (4 of 6 -> 3 of 6) are early noise, not collapse; rising ones are
    more_pools = Genotype(
        ((("max_pool_3x3", 0), ("avg_pool_3x3", 1)), (("max_pool_3x3", 0), ("max_pool_3x3", 2)), conv), reduce
    )
    assert collapse(pools, 2, before=more_pools) is None
    assert "rising" in collapse(more_pools, 2, before=pools) and collapse(pools, 2, before=healthy)
