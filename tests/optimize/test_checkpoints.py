"""The search's candidate checkpoints: a candidate met again in the same run is this run's, not
the interrupted run's that --resume continues."""

from __future__ import annotations

import onnx

from tensorfold.demo import demo_model_path
from tensorfold.optimize.checkpoints import SearchCheckpoints, candidate_key


def test_a_candidate_saved_by_this_run_is_not_counted_as_resumed(tmp_path):
    model = onnx.load(str(demo_model_path()))
    key, settings = candidate_key(model), {"steps": 3}
    first = SearchCheckpoints(tmp_path / "out.ckpt", False, settings)
    assert first.start() == {} and first.done(key) is None
    first.record(lr=1e-4)
    first.save(key, model, {"steps": 3, "seconds": 1.0, "stop": "done"})
    again = first.done(key)
    assert again is not None and not again.resumed and again.info["steps"] == 3
    later = SearchCheckpoints(tmp_path / "out.ckpt", True, settings)  # --resume of that folder
    assert later.start()["lr"] == 1e-4
    resumed = later.done(key)
    assert resumed is not None and resumed.resumed
    assert candidate_key(resumed.model) == key
