"""How the CLI reports a failure: always one line, and an exit status that says whose fault it is.

    2    a user mistake or an environment failure (TensorfoldError, a bad option, an OSError such
         as a full disk or a read-only folder, memory exhausted by the size asked for)
    1    verification failed (errors.VerificationFailed), or an internal error: a bug in tensorfold; `--debug` (or TENSORFOLD_DEBUG=1) shows the traceback
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM)

Temp files are removed on every path: writes go through tensorfold.outputs, whose `finally`
runs because SIGTERM is turned into errors.Terminated instead of killing the process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from typing import Any

import click

from tensorfold import signals
from tensorfold.errors import TensorfoldError, Terminated, VerificationFailed
from tensorfold.outputs import remove_live

_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "no such file or folder",
}


def describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno)
    if hint and hint.lower() not in reason.lower():
        reason = f"{reason} ({hint})"
    return f"{where}: {reason}" if where else reason


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


@contextlib.contextmanager
def reporting(ctx: click.Context, debug: bool = False):
    """Run a command; map whatever escapes it to one `error:` line and its exit status."""
    previous = _install_sigterm()
    try:
        with signals.watching(remove_live):
            yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.exceptions.NoArgsIsHelpError):
        raise  # --help, --version, and a bare group name showing its help
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
        _fail(2, f"{exc.format_message()} (see '{where} --help')")
    except click.ClickException as exc:
        _fail(2, exc.format_message())
    except TensorfoldError as exc:
        _fail(2, str(exc))
    except VerificationFailed as exc:
        _fail(1, f"verification failed: {exc}")
    except KeyboardInterrupt as exc:
        _fail(130, "interrupted" + (f": {exc}" if str(exc) else ""))
    except Terminated as exc:
        _fail(143, "terminated" + (f": {exc}" if str(exc) else ""))
    except MemoryError as exc:
        if debug:
            raise
        _fail(
            2,
            f"out of memory: {_first_line(exc) or 'the size asked for does not fit'}; ask for less "
            "(a smaller rank, shape or batch)",
            every_rank=True,
        )
    except OSError as exc:
        if debug:
            raise
        _fail(2, describe_os_error(exc))
    except Exception as exc:  # noqa: BLE001 - the one place internal errors are reported
        if debug:
            raise
        memory = _out_of_memory(exc)
        if memory:
            _fail(2, memory, every_rank=True)
        _fail(
            1,
            f"internal error ({type(exc).__name__}: {_first_line(exc)}); this is a bug in tensorfold: "
            "rerun with --debug right after `tensorfold` (or TENSORFOLD_DEBUG=1) for the traceback and report it",
        )
    finally:
        for sig, handler in previous.items():  # a caller's own handlers back (a CLI run inside a test, a notebook)
            signal.signal(sig, handler)


def _out_of_memory(exc: BaseException) -> str | None:
    """Memory exhausted, as torch and its DataLoader report it (RuntimeErrors, not MemoryError): the
    size asked for, not a bug."""
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text.lower():
        return (
            f"out of memory: {_first_line(exc)[:160]}; ask for less (a smaller --batch-size, fewer "
            "--channels, a smaller model)"
        )
    if "DataLoader worker" in text and ("killed" in text or "exited unexpectedly" in text):
        return (
            "a data loading worker was killed (out of memory?): lower --workers (0 decodes in the training "
            "process) or --batch-size"
        )
    return None


def _fail(status: int, message: str, every_rank: bool = False) -> None:
    """One `error:` line and the exit status. Under torchrun every process checks the same input and
    meets the same refusal or interrupt: rank 0 alone says it (each rank printed it once); an
    internal error or memory exhausted (`every_rank`) is said by every rank that meets it (it may be
    one rank's own)."""
    if (
        not every_rank
        and status != 1
        and int(os.environ.get("RANK", "0") or 0) > 0
        and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    ):
        raise click.exceptions.Exit(status)
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(status)


def _raise_terminated(signum, frame):
    signals.seen()
    raise Terminated()


def _raise_interrupted(signum, frame):
    signals.seen()
    raise KeyboardInterrupt()


def _install_sigterm() -> dict[int, Any]:
    """SIGTERM and Ctrl-C raised where the main thread is; the watchdog (signals.py) for the times it
    is inside a native call that does not return. Returns the handlers replaced, to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupted)
    return previous
