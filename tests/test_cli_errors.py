"""How the CLI fails: one line always; 2 for the user's or the environment's fault, 1 for a
failed verification or a bug (with the --debug hint), 130 on Ctrl-C, 143 on SIGTERM."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from tensorfold.cli import main
from tensorfold.demo import demo_model_path

DEMO = demo_model_path()


def invoke(*args, **kwargs):
    result = CliRunner().invoke(main, [str(a) for a in args], **kwargs)
    return result


def one_line(result, status: int, expected: str) -> str:
    assert result.exit_code == status, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "exc, status, expected",
    [
        (RuntimeError("a bug"), 1, "rerun with --debug"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/out.onnx"), 2, "/x/out.onnx: No space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/out.onnx"), 2, "Read-only file system"),
        (MemoryError("Unable to allocate 74.5 GiB"), 2, "out of memory: Unable to allocate 74.5 GiB"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["bug", "disk-full", "read-only", "memory", "ctrl-c"],
)
def test_every_failure_is_one_line_with_its_status(tmp_path, monkeypatch, exc, status, expected):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("tensorfold.api.optimize", fail)
    one_line(invoke("optimize", DEMO, "-o", tmp_path / "o.onnx"), status, expected)


def test_debug_shows_the_traceback_of_a_bug(tmp_path, monkeypatch):
    monkeypatch.setattr("tensorfold.api.optimize", lambda *a, **k: 1 / 0)
    result = invoke("--debug", "optimize", DEMO, "-o", tmp_path / "o.onnx")
    assert isinstance(result.exception, ZeroDivisionError)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["optimize", DEMO], "Missing option '-o'"),
        (["optimize", DEMO, "-o", "x.onnx", "--bogus"], "No such option"),
        (["recover", DEMO, "-o", "x.onnx", "--lr", "nan"], "not a finite number"),
        (["profile", DEMO, "--top", "-1"], "--top"),
        (["profile", DEMO, "--threads", "-2"], "--threads"),
        (["search", "ranks", DEMO, "--timeout", "-1"], "--timeout"),
        (["search", "nas", "--budget-minutes", "-1"], "--budget-minutes"),
        (["frobnicate"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_too(args, expected):
    line = one_line(invoke(*args), 2, expected)
    assert "--help" in line


def test_python_dash_m_tensorfold_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "tensorfold", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "tensorfold" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_a_full_disk_is_one_line_and_leaves_no_temp_file(tmp_path):
    disk = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this container may not mount a tmpfs")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tensorfold", "optimize", str(DEMO), "-o", str(disk / "o.onnx"), "--no-verify"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
        assert list(disk.iterdir()) == []
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = subprocess.run(
            [sys.executable, "-m", "tensorfold", "optimize", str(DEMO), "-o", str(disk / "o.onnx")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2 and "not writable" in result.stderr.strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_search_on_a_full_disk_leaves_neither_storage_nor_a_partial_front(tmp_path, storage):
    """The study file this run created and the front's files: all gone; nothing half-written."""
    disk = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this container may not mount a tmpfs")
    try:
        url = f"sqlite:///{disk}/s.db" if storage == "sqlite" else f"journal:{disk}/s.log"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tensorfold",
                "search",
                "ranks",
                str(DEMO),
                "--n-trials",
                "30",
                "--storage",
                url,
                "-o",
                str(disk / "front"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


WATCHDOG = r"""
import sys, click, numpy as np
from pathlib import Path
from tensorfold.cli_errors import reporting
from tensorfold.outputs import atomic_path


@click.command()
def main():
    with reporting(click.get_current_context()):
        with atomic_path(Path(sys.argv[1])) as tmp:
            tmp.write_text("partial")
            print("ready", flush=True)
            np.linalg.svd(np.random.default_rng(0).random((3000, 3000)))    # many seconds in LAPACK


main(args=[])
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_honoured_within_seconds_inside_a_long_native_call(tmp_path, sig, code):
    """Python sees a signal only between bytecodes: the watchdog (signals.py) ends a process stuck in
    native code within its grace, and removes the temp file being written."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(tmp_path / "out.txt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # inside the SVD
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 5, "the signal waited for the native call to return"
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_a_cli_run_in_process_gives_the_callers_signal_handlers_back(tmp_path):
    """Each run installs its own Ctrl-C and SIGTERM handlers; a caller running the CLI in its own
    process (a test, a notebook) gets its handlers back. The Ctrl-C one stayed replaced, and five
    signal tests later in the suite failed depending on which runs came before them."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = CliRunner().invoke(main, ["inspect", str(demo_model_path())])
    assert result.exit_code == 0, result.output
    assert {sig: signal.getsignal(sig) for sig in before} == before
