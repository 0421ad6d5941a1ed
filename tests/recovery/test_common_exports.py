"""The ops of common exports train: a YOLOv8-shaped detector (C2f split/concat, SPPF max pools,
nearest upsampling, the DFL softmax) and a BERT-shaped encoder (embeddings, attention with a padding
mask, GELU, LayerNorm) run in the torch trainer with no frozen node, match onnxruntime, and pass
gradients to every weight; the reductions and index ops added for them match onnxruntime too."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from tensorfold.onnxrt.sessions import make_session
from tensorfold.recovery.onnx_torch import OnnxModule


class YoloLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU())
        self.cv1 = nn.Conv2d(16, 32, 1)
        self.m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())
        self.cv2 = nn.Conv2d(48, 32, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.box = nn.Conv2d(64, 4 * 16, 1)
        self.cls = nn.Conv2d(64, 5, 1)
        self.register_buffer("proj", torch.arange(16, dtype=torch.float32))

    def forward(self, x):
        x = self.stem(x)
        a, b = self.cv1(x).split(16, 1)
        y = self.cv2(torch.cat([a, b, self.m(b)], 1))
        y = torch.cat([y, self.pool(y)], 1)
        y = nn.functional.avg_pool2d(self.up(y), 2)
        n, _, h, w = y.shape
        box = self.box(y).view(n, 4, 16, h * w).transpose(2, 1).softmax(1)
        box = (box * self.proj.view(1, 16, 1, 1)).sum(1)
        return torch.cat([box, self.cls(y).view(n, 5, h * w).sigmoid()], 1)


class BertLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.pos = nn.Embedding(100, 32), nn.Embedding(16, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
        self.pool, self.out = nn.Linear(32, 32), nn.Linear(32, 3)

    def forward(self, ids, mask):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        h = self.layer(self.emb(ids) + self.pos(pos), src_key_padding_mask=mask == 0)
        return self.out(torch.tanh(self.pool(h[:, 0])))


def _export(module, args, names, path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["out"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "out"]},
        )
    return onnx.load(path)


@pytest.mark.parametrize("case", ["yolo", "bert"])
def test_common_exports_train_without_frozen_nodes(tmp_path, case):
    torch.manual_seed(1)
    if case == "yolo":
        module, names = YoloLike(), ["images"]
        args = (torch.randn(2, 3, 32, 32),)
    else:
        module, names = BertLike(), ["ids", "mask"]
        mask = torch.ones(2, 16, dtype=torch.int64)
        mask[1, 10:] = 0
        args = (torch.randint(0, 100, (2, 16)), mask)
    model = _export(module, args, names, tmp_path / f"{case}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a frozen node warns: here that fails the test
        trainer = OnnxModule(model)
        out = trainer(*args)[0]
    want = make_session(model).run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    weights = {t.name for t in model.graph.initializer if len(t.dims) >= 2 and t.data_type == TensorProto.FLOAT}
    missing = [n for n in weights if trainer.params[trainer.param_of[n]].grad is None]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize(
    "op, attrs, inputs",
    [
        ("Mod", {}, [np.array([-7, 7, 5], np.int64), np.array([3, -3, 5], np.int64)]),
        ("Mod", {"fmod": 1}, [np.array([-7.5, 7.5], np.float32), np.array([2.0, -2.0], np.float32)]),
        ("ArgMax", {"axis": 1, "keepdims": 0}, [np.array([[1, 3, 3], [2, 0, 1]], np.float32)]),
        ("ArgMax", {"axis": 1, "select_last_index": 1}, [np.array([[1, 3, 3], [2, 0, 1]], np.float32)]),
        ("ArgMin", {"axis": 0}, [np.array([[1, 3], [0, 5]], np.float32)]),
        (
            "CumSum",
            {"exclusive": 1, "reverse": 1},
            [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(1, np.int64)],
        ),
        ("CumSum", {}, [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(0, np.int64)]),
        ("Trilu", {"upper": 0}, [np.arange(16, dtype=np.float32).reshape(4, 4), np.array(1, np.int64)]),
        ("Trilu", {}, [np.arange(16, dtype=np.float32).reshape(4, 4)]),
        ("ReduceProd", {"keepdims": 0}, [np.arange(1, 7, dtype=np.float32).reshape(2, 3), np.array([1], np.int64)]),
        ("ReduceL2", {}, [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0], np.int64)]),
        ("ReduceLogSumExp", {}, [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([-1], np.int64)]),
    ],
)
def test_added_ops_match_onnxruntime(op, attrs, inputs):
    names = [f"in{i}" for i in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
            for n, a in zip(names, inputs)
        ],
        [helper.make_empty_tensor_value_info("y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    want = make_session(model).run(None, dict(zip(names, inputs)))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = OnnxModule(model)(*(torch.from_numpy(a) for a in inputs))[0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert got.dtype == torch.from_numpy(np.asarray(want)).dtype


def test_a_two_input_encoder_recovers_from_an_npz_per_input(tmp_path):
    """Token ids and an attention mask, one array per input named as the inputs: recover trains."""
    from tensorfold.api import optimize
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.run import recover

    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    model = _export(BertLike(), (ids, mask), ["ids", "mask"], tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    n = 48
    masks = np.ones((n, 16), np.int64)
    for i, length in enumerate(rng.integers(4, 17, n)):
        masks[i, length:] = 0
    data = tmp_path / "tokens.npz"
    np.savez(data, ids=rng.integers(0, 100, (n, 16)), mask=masks)
    small = tmp_path / "bert.small.onnx"
    optimize(tmp_path / "bert.onnx", small, method="svd", ratio=2, progress=False, inputs=str(data))
    report = recover(
        small,
        tmp_path / "r.onnx",
        teacher_path=tmp_path / "bert.onnx",
        data=str(data),
        cfg=RecoverConfig(max_steps=4, batch_size=8, threads=1),
        progress=False,
    )
    assert report["steps"] == 4 and "ids [16] int64, mask [16] int64" in report["data"]
    assert report["metric"] == "teacher_agreement" and model.graph.input[1].name == "mask"
    with pytest.raises(Exception, match="no array for input"):
        np.savez(tmp_path / "ids_only.npz", ids=rng.integers(0, 100, (n, 16)))
        recover(
            small,
            tmp_path / "r2.onnx",
            teacher_path=tmp_path / "bert.onnx",
            data=str(tmp_path / "ids_only.npz"),
            cfg=RecoverConfig(max_steps=1, batch_size=8, threads=1),
            progress=False,
        )
