"""tensorfold.outputs: every write atomic, with the umask's mode, never onto an input, cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.outputs import (
    MANIFEST,
    OutputFolder,
    atomic_path,
    check_output,
    check_output_dir,
    guard_inputs,
    guarded,
    json_text,
    new_file_mode,
    write_text_atomic,
)


def test_a_write_gets_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o644 == new_file_mode()
    finally:
        os.umask(old)


def test_no_write_lands_on_an_input_even_through_a_link(tmp_path):
    given = tmp_path / "model.onnx"
    given.write_bytes(b"precious")
    (tmp_path / "link.onnx").symlink_to(given)
    os.link(given, tmp_path / "hard.onnx")
    with guard_inputs(given):
        for target in ("model.onnx", "link.onnx", "hard.onnx"):
            with pytest.raises(TensorfoldError, match="is an input"):
                write_text_atomic(tmp_path / target, "overwritten")
            with pytest.raises(TensorfoldError, match="is an input"):
                check_output(tmp_path / target)
        write_text_atomic(tmp_path / "other.onnx", "fine")
    assert given.read_bytes() == b"precious"
    write_text_atomic(tmp_path / "model.onnx", "the guard ends with its block")


def test_files_inside_an_input_folder_are_inputs(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    (data / "0.png").write_bytes(b"png")
    with guard_inputs(data):
        for target in (data / "0.png", data / "new.onnx", data / "sub" / "x.onnx"):  # existing or not
            with pytest.raises(TensorfoldError, match="inside the input folder"):
                check_output(target)
        with pytest.raises(TensorfoldError, match="inside the input folder"):
            write_text_atomic(data / "0.png", "x")
        with pytest.raises(TensorfoldError, match="lies inside an input"):
            check_output_dir(data / "out")


def test_an_input_models_external_weights_are_inputs_too(tmp_path):
    import numpy as np
    import onnx

    from tests.passes.single_node import conv_model

    model, _ = conv_model(np.ones((16, 8, 3, 3), np.float32), bias=False)
    onnx.save_model(
        model, tmp_path / "orig.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=16
    )
    with guard_inputs(tmp_path / "orig.onnx"):
        with pytest.raises(TensorfoldError, match="is an input"):
            write_text_atomic(tmp_path / "model.onnx.data", "clobbered")


def test_guarded_reads_paths_and_lists_of_paths_from_the_arguments(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")

    @guarded("model", "teachers")
    def run(model, out, *, teachers=()):
        write_text_atomic(out, "x")

    for out in (a, b):
        with pytest.raises(TensorfoldError, match="is an input"):
            run(a, out, teachers=[b])
    run(a, tmp_path / "c", teachers=[b])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: os.mkfifo(p), "not a regular file"),
    ],
)
def test_an_existing_output_that_is_not_a_regular_file_is_refused(tmp_path, make, message):
    target = tmp_path / "out"
    make(target)
    with pytest.raises(TensorfoldError, match=message):
        check_output(target)
    with pytest.raises(TensorfoldError):
        write_text_atomic(target, "x")


def test_check_output_refuses_a_missing_or_unwritable_folder(tmp_path):
    with pytest.raises(TensorfoldError, match="does not exist"):
        check_output(tmp_path / "nope" / "out.onnx")
    if os.geteuid() != 0:  # root writes anywhere; the read-only tmpfs test covers it
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(TensorfoldError, match="not writable"):
            check_output(ro / "out.onnx")


def test_a_failed_or_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise exc
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_sigterm_during_a_write_removes_the_temp_file(tmp_path):
    """The CLI turns SIGTERM into errors.Terminated, so atomic_path's cleanup runs."""
    script = textwrap.dedent(f"""
        import signal, sys, time
        from pathlib import Path
        from tensorfold.cli_errors import _install_sigterm
        from tensorfold.outputs import atomic_path
        _install_sigterm()
        with atomic_path(Path({str(tmp_path / "out.bin")!r})) as tmp:
            tmp.write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_json_never_holds_a_bare_nan():
    import numpy as np

    text = json_text({"a": float("nan"), "b": [np.float32("inf"), np.int64(3), np.bool_(True)], "c": np.arange(2)})
    assert "NaN" not in text and "Infinity" not in text
    assert text.replace(" ", "").replace("\n", "") == '{"a":null,"b":[null,3,true],"c":[0,1]}'


# --- OutputFolder: a folder a command writes several files into ------------------------------------


def _folder(path, staged=False):
    return OutputFolder(path, "-o", ("front.json", "point-*.onnx"), staged=staged)


def test_a_users_own_file_under_a_name_the_command_writes_is_refused_before_any_work(tmp_path):
    out = tmp_path / "pd"
    out.mkdir()
    (out / "point-9.onnx").write_text("mine")
    (out / "notes.txt").write_text("mine too")  # under no name the command writes: left alone
    with pytest.raises(TensorfoldError, match="point-9.onnx, which tensorfold did not write"):
        _folder(out).check()
    (out / "point-9.onnx").unlink()
    _folder(out).check()


def test_an_input_inside_the_folder_under_a_written_name_is_refused(tmp_path):
    out = tmp_path / "pd"
    out.mkdir()
    (out / "front.json").write_text("{}")
    (out / MANIFEST).write_text('{"written_by": "tensorfold", "files": ["front.json"]}')
    with guard_inputs(out / "front.json"), pytest.raises(TensorfoldError, match="holds an input"):
        _folder(out).check()


def test_a_staged_folder_changes_all_at_once_or_not_at_all(tmp_path):
    out = tmp_path / "pd"
    first = _folder(out, staged=True).check()
    with first.writing():
        write_text_atomic(first.file("point-1.onnx"), "1")
        write_text_atomic(first.file("point-2.onnx"), "2")
        assert not (out / "point-1.onnx").exists()  # nothing in place before the commit
        write_text_atomic(first.file("front.json"), "a")
        first.commit(stale=("point-*",))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "front.json", "point-1.onnx", "point-2.onnx"]
    # a second run that fails half-way (a full disk) leaves the first run's files as they were
    second = _folder(out, staged=True).check()
    with pytest.raises(OSError), second.writing():
        write_text_atomic(second.file("point-1.onnx"), "new")
        raise OSError(28, "No space left on device")
    assert (out / "point-1.onnx").read_text() == "1" and (out / "front.json").read_text() == "a"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "front.json", "point-1.onnx", "point-2.onnx"]
    # a third that succeeds with one point: the earlier run's second point goes, a user's file stays
    (out / "notes.txt").write_text("mine")
    third = _folder(out, staged=True).check()
    with third.writing():
        write_text_atomic(third.file("point-1.onnx"), "x")
        write_text_atomic(third.file("front.json"), "b")
        third.commit(stale=("point-*",))
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "front.json", "notes.txt", "point-1.onnx"]


def test_an_interrupted_staged_run_leaves_the_earlier_run_whole_and_sub_folders_are_replaced(tmp_path):
    """A pipeline interrupted in an existing folder left new nas.onnx and factorized.onnx beside the
    old recovered.int8.onnx: staged, the earlier run stays whole; its sub-folder is replaced at commit."""
    out = tmp_path / "p"

    def folder():
        return OutputFolder(out, "--output-dir", ("a.onnx", "b.onnx", "nas"), staged=True).check()

    first = folder()
    with first.writing():
        write_text_atomic(first.file("a.onnx"), "1")
        write_text_atomic(first.file("b.onnx"), "1")
        first.file("nas").mkdir()
        (first.file("nas") / "old.json").write_text("1")
        first.commit(stale=("*",))
    second = folder()
    with pytest.raises(KeyboardInterrupt), second.writing():
        write_text_atomic(second.file("a.onnx"), "2")
        raise KeyboardInterrupt
    assert (out / "a.onnx").read_text() == "1" and (out / "b.onnx").read_text() == "1"
    third = folder()
    with third.writing():
        write_text_atomic(third.file("a.onnx"), "3")
        third.file("nas").mkdir()
        (third.file("nas") / "new.json").write_text("3")
        third.commit(stale=("*",))
    assert sorted(p.name for p in (out / "nas").iterdir()) == ["new.json"]
    assert not (out / "b.onnx").exists()  # the earlier run's file this one did not write again
    fresh = OutputFolder(tmp_path / "fresh", "--output-dir", ("a.onnx",), staged=True).check()
    with pytest.raises(KeyboardInterrupt), fresh.writing():
        write_text_atomic(fresh.file("a.onnx"), "1")
        raise KeyboardInterrupt
    assert not (tmp_path / "fresh").exists()  # nothing to resume from: the folder this run made goes


def test_a_failed_run_removes_only_what_it_created_and_the_folder_it_made(tmp_path):
    out = tmp_path / "new"
    folder = _folder(out).check()
    with pytest.raises(ValueError), folder.writing():
        write_text_atomic(folder.file("point-1.onnx"), "1")
        raise ValueError("a bad sample")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    folder = _folder(out).check()
    with pytest.raises(ValueError), folder.writing():
        write_text_atomic(folder.file("point-1.onnx"), "1")
        raise ValueError("a bad sample")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # an interrupt keeps what was written (a checkpoint to resume from)
    folder = _folder(out).check()
    with pytest.raises(KeyboardInterrupt), folder.writing():
        write_text_atomic(folder.file("point-1.onnx"), "1")
        raise KeyboardInterrupt
    assert (out / "point-1.onnx").read_text() == "1"


def test_an_output_under_a_file_or_in_proc_says_which_mistake_it_is(tmp_path):
    from tensorfold.outputs import check_output

    (tmp_path / "copy.onnx").write_text("x")
    with pytest.raises(TensorfoldError, match=r"copy.onnx is a file, not a folder"):  # was: "does not exist"
        check_output(tmp_path / "copy.onnx" / "x.onnx")
    if os.path.exists("/proc/self"):
        with pytest.raises(TensorfoldError, match=r"not writable \(files cannot be created there\)"):
            check_output("/proc/x.onnx")
