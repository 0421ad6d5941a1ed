"""Ctrl-C and SIGTERM honoured within seconds, even inside a long native call.

Python runs a signal handler only between bytecodes of the main thread: while onnxruntime builds a
session, LAPACK factorizes a large layer or torch runs a convolution, a SIGTERM waits (9 s was seen
on `optimize`) and a CI runner that cancels a job kills the process hard after its grace period,
leaving temp files. So the CLI also arms a watchdog: the C-level handler writes the signal's number
to a wakeup pipe at once; a thread reads it and, when no Python-level handler has run within
GRACE_S (the main thread is stuck in native code), removes the temp files and staging folders being
written (outputs.remove_live), prints the one `error:` line and exits with 130 or 143 without
unwinding. When the main thread does see the signal in time, everything unwinds as usual (finally
blocks, checkpoints saved by recovery's own handler).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

GRACE_S = 1.5
_EXIT = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
_handled = threading.Condition()
_count = {"handled": 0}
_armed = {"on": False}
_active = {"depth": 0}  # the watchdog acts only inside watching(): a command's run


def seen() -> None:
    """Called by every Python-level handler: the main thread has the signal, the watchdog stands down."""
    with _handled:
        _count["handled"] += 1
        _handled.notify_all()


@contextlib.contextmanager
def watching(on_exit):
    """While the block runs, a signal the main thread does not see within GRACE_S ends the process."""
    arm(on_exit)
    _active["depth"] += 1
    try:
        yield
    finally:
        _active["depth"] -= 1


def arm(on_exit) -> None:
    """Start the watchdog (main thread only; once per process). `on_exit()` runs just before a forced
    exit (it removes what is being written)."""
    if _armed["on"] or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(read_fd)
        os.close(write_fd)
        return
    _armed["on"] = True
    threading.Thread(target=_watch, args=(read_fd, on_exit), name="tensorfold-signal-watchdog", daemon=True).start()


def _watch(read_fd: int, on_exit) -> None:
    received = 0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in _EXIT or not _active["depth"]:
                continue
            received += 1
            with _handled:
                if _handled.wait_for(lambda: _count["handled"] >= received, GRACE_S):
                    continue
            code, what = _EXIT[signum]
            with contextlib.suppress(Exception):
                on_exit()
            with contextlib.suppress(OSError):
                os.write(2, f"\nerror: {what} (inside a native call; what was being written is removed)\n".encode())
            os._exit(code)


_frames: list[tuple[bool, dict]] = []  # held() blocks: (deferring inside, the handlers it replaced)
_pending: list[int] = []  # signals that came in while deferred


@contextlib.contextmanager
def held(hold: bool = True):
    """Ctrl-C and SIGTERM wait until the block ends (`hold`), then are raised as they came; inside a
    block that holds them, hold=False lets them through again (the waiting ones first). For code
    that must not be cut in the middle: a journal append under its lock, Optuna's bookkeeping between
    trials (whose `finally` reads a variable that a signal there leaves unset).

    Python-level handlers, not a signal mask: a process-directed signal reaches whichever thread
    does not block it, and its Python handler then runs in the main thread all the same."""
    deferring = bool(_frames) and _frames[-1][0]
    if threading.current_thread() is not threading.main_thread() or hold == deferring:
        yield
        return
    if hold:
        replaced = {sig: signal.signal(sig, _defer) for sig in _EXIT}
    else:  # the handlers the innermost holding block replaced
        own = next(handlers for holds, handlers in reversed(_frames) if holds)
        replaced = {sig: signal.signal(sig, own[sig]) for sig in _EXIT}
    _frames.append((hold, replaced))
    try:
        if not hold:
            _deliver()
        yield
    finally:
        _frames.pop()
        for sig, handler in replaced.items():
            signal.signal(sig, handler)
        if hold:
            _deliver()


def _defer(signum, _frame) -> None:
    seen()  # the main thread has it: the watchdog stands down
    _pending.append(signum)


def _deliver() -> None:
    """The signals that waited, raised again now that their own handlers are in place."""
    while _pending:
        signal.raise_signal(_pending.pop(0))
