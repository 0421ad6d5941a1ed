"""One latency model, two kinds: measured on a provider, predicted for a device; same questions."""

import numpy as np

from tensorfold.demo import demo_model_path
from tensorfold.graph.io import load_model
from tensorfold.runtime.devices import DEVICES
from tensorfold.runtime.latency_model import Measured, Predicted, latency_model
from tensorfold.runtime.roofline import predict_seconds

SHAPES = {"input": [1, 1, 28, 28]}


def test_the_factory_picks_by_whether_a_device_is_given():
    assert isinstance(latency_model("cpu", 1), Measured)
    predicted = latency_model("cpu", 1, "rx580")
    assert isinstance(predicted, Predicted) and predicted.predicted and predicted.label.startswith("device rx580")
    assert latency_model("cpu", 1).key != predicted.key


def test_measured_and_predicted_answer_the_same_questions():
    model = load_model(demo_model_path())
    measured, predicted = Measured("cpu", 1, runs=3), Predicted(DEVICES["rx580"])
    for lm in (measured, predicted):
        assert lm.ms(model, SHAPES) > 0 and lm.call_ms() > 0
        assert 0.5 < lm.speedup(model, model, SHAPES) < 2.0  # a model against itself
    assert predicted.ms(model, SHAPES) == predict_seconds(model, SHAPES, DEVICES["rx580"]) * 1e3
    feeds = {"input": np.zeros((1, 1, 28, 28), np.float32)}
    assert measured.ms(model, SHAPES, feeds) > 0
