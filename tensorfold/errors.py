"""Errors a user can cause. The CLI prints them as one line and exits 2."""


class TensorfoldError(Exception):
    """A problem with the user's input or request, not a bug in tensorfold."""


class DecompositionError(TensorfoldError):
    """A decomposition that could not produce a usable result (NaN, diverged, degenerate)."""


class VerificationFailed(Exception):
    """A model that runs but whose outputs are wrong (non-finite where the reference is finite):
    not a user mistake, not a crash. The CLI prints it as one line and exits 1."""


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is so that `finally` blocks remove temp files.
    A BaseException, like KeyboardInterrupt: a broad `except Exception` must not swallow it."""
