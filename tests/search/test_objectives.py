"""What a rank-search trial is judged on."""

import numpy as np

from tensorfold.search.objectives import Evaluator
from tests.passes.single_node import conv_model


def test_latency_is_timed_on_one_call_of_the_shapes_it_is_labelled_with():
    """A file of 16 inputs was timed as one call (a ViT's 16 images read 2164 ms as its latency)."""
    model, feeds = conv_model(np.ones((4, 3, 3, 3)), bias=False, batch=16)
    evaluator = Evaluator(model, {"x": [1, 3, 9, 9]}, feeds)
    assert evaluator.call_feeds["x"].shape == (1, 3, 9, 9) and evaluator.feeds["x"].shape[0] == 16


def test_a_fixed_batch_model_is_judged_a_call_at_a_time():
    """A fixed-batch-1 model with a file of 16 inputs: onnxruntime refused the whole file in one
    call ("invalid dimensions"), an internal error of search ranks."""
    model, feeds = conv_model(np.ones((4, 3, 3, 3)), bias=False, batch=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    evaluator = Evaluator(model, {"x": [1, 3, 9, 9]}, feeds)
    assert len(evaluator.reference.calls) == 16
    assert evaluator.error(model) == 0.0
