import optuna
import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model
from tensorfold.graph.normalize import normalize
from tensorfold.graph.verify import verify_models
from tensorfold.onnxrt.inputs import random_inputs
from tensorfold.passes.base import Choice
from tensorfold.search.space import RankSpace, decode_plan, encode_plan


@pytest.fixture(scope="module")
def space(request):
    from tensorfold.demo import demo_model_path

    model, _ = normalize(load_model(demo_model_path()))
    return RankSpace(model, ("svd", "tucker", "cp", "tt"), progress=False)


def test_options_are_efficient_and_smaller_than_the_layer(space):
    assert space.mode == "per-layer" and len(space.layers) == 4
    for opts in space.layers:
        for cands in opts.by_method.values():
            assert all(c.params < opts.layer.params for c in cands)
            assert [c.params for c in cands] == sorted(c.params for c in cands)
            assert all(a.error2 > b.error2 for a, b in zip(cands, cands[1:]))
    kxk = next(o for o in space.layers if o.layer.kind == "conv" and not o.layer.is_pointwise and o.layer.params > 1000)
    assert {"tucker", "cp", "tt"} <= set(kxk.by_method)
    gemm = next(o for o in space.layers if o.layer.kind != "conv")
    assert "tucker" not in gemm.by_method  # a matrix is an SVD (or a TT matrix), never a Tucker-2


def test_plans_assemble_into_valid_models_and_larger_ranks_err_less(space):
    feeds = random_inputs(space.model, {}, 0)
    errors = []
    for share in (0.0, 1.0):
        picks = {o.name: o.pick("svd" if "svd" in o.by_method else "tucker", share) for o in space.layers}
        plan = {name: Choice(c.method, c.ranks) for name, c in picks.items()}
        result = space.assemble(plan)
        assert len(result.rewritten) == len(space.layers)
        errors.append(verify_models(space.model, result.model, feeds, "random").max_relative_error)
        assert decode_plan(encode_plan(plan)) == plan
    assert errors[1] < 0.8 * errors[0]


def test_assembly_reuses_decompositions(space, monkeypatch):
    plan = {o.name: None for o in space.layers}
    first = space.layers[1]
    plan[first.name] = Choice("tucker", first.by_method["tucker"][3].ranks)
    space.assemble(plan)
    calls = []
    tucker = space.planned.methods["tucker"]
    monkeypatch.setattr(tucker, "build", lambda *a, **k: calls.append(a) or pytest.fail("rebuilt"))
    for _ in range(3):
        space.assemble(plan)
    assert calls == []


def test_keep_everything_changes_nothing(space):
    result = space.assemble({o.name: None for o in space.layers})
    assert not result.modified


def test_per_layer_and_global_sampling(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    plan = space.suggest(trial)
    assert set(plan) == {o.name for o in space.layers}
    assert any(k.endswith(".size") for k in trial.params)
    model = space.model
    glob = RankSpace(model, ("svd", "tucker"), mode="global", progress=False)
    sizes = []
    for ratio in (1.5, 4.0):
        t = optuna.trial.FixedTrial(
            {"method": "tucker", "ratio": ratio, **{f"{o.name}.offset": 0 for o in glob.layers}}
        )
        sizes.append(glob.assemble(glob.suggest(t)).eligible_params_after)
    assert sizes[1] < sizes[0] <= glob.total_params / 1.5 + 1


def test_bad_plans_and_methods_are_clear_errors(space):
    with pytest.raises(TensorfoldError, match="unknown method"):
        RankSpace(space.model, ("svd", "lowrank"))
    with pytest.raises(TensorfoldError, match="lacks"):
        space.assemble({"nope": None})
    with pytest.raises(TensorfoldError, match="needs 'keep'"):
        decode_plan({"conv": {"method": "tucker", "ranks": [0, 2]}})
