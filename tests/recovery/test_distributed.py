"""recover under torchrun: 2 CPU processes over gloo, rank 0 alone writing; the sampler's shards."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tensorfold.api import optimize
from tensorfold.demo import demo_model_path
from tensorfold.errors import TensorfoldError
from tensorfold.recovery.distributed import World, epoch_order, world

TEACHER = demo_model_path()


def test_shards_are_disjoint_cover_the_data_and_change_per_epoch():
    n = 101
    shards = [epoch_order(n, 0, 0, World(rank, 2)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 51  # padded to equal length
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    assert len(set(shards[0]) & set(shards[1])) <= 1  # only the padding repeats
    assert not np.array_equal(epoch_order(n, 0, 0, World(0, 2)), epoch_order(n, 0, 50, World(0, 2)))
    assert sorted(epoch_order(n, 0, 0, World())) == list(range(n))  # one process: every sample


def test_world_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = world()
    assert (w.rank, w.size, w.local_rank, w.distributed, w.main) == (1, 4, 1, True, False)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert not world().distributed


def test_peers_are_refused_under_torchrun(monkeypatch, tmp_path):
    from tensorfold.recovery.run import recover

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TensorfoldError, match="without torchrun"):
        recover(TEACHER, tmp_path / "r.onnx", teacher_path=TEACHER, data="x.npz", peers=[TEACHER])


def test_two_processes_train_and_rank_0_alone_writes(tmp_path):
    student = tmp_path / "s.onnx"
    optimize(TEACHER, student, method="tucker", ratio=4, progress=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=(rng.random((200, 28, 28)) * 255).astype(np.uint8), y=rng.integers(0, 10, 200))
    out = tmp_path / "r.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "tensorfold",
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--data",
            str(tmp_path / "d.npz"),
            "-o",
            str(out),
            "--max-steps",
            "4",
            "--batch-size",
            "16",
            "--eval-every",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)  # one report: rank 0's
    assert report["world_size"] == 2 and report["steps"] == 4
    assert "2 processes (DistributedDataParallel over gloo)" in done.stderr
    assert out.exists() and (tmp_path / "r.onnx.ckpt" / "last.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.onnx")) == ["r.onnx", "r.onnx.ckpt"]
