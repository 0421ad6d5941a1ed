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


def check_field_types(options: object, numbers: tuple[str, ...]) -> None:
    """A Python caller's options by type, before any work: `numbers` must be numbers (a '2' would
    fail deep in the work, as a comparison of str and int) and every field declared bool a bool
    (int8='false' would read as true). `options` is a dataclass."""
    from dataclasses import fields

    for name in numbers:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TensorfoldError(
                f"{name}={value!r}: a number is needed (--{name.replace('_', '-')} on the command line)"
            )
    for f in fields(options):  # type: ignore[arg-type]  # a dataclass, as documented
        if f.type in ("bool", bool) and not isinstance(getattr(options, f.name), bool):
            raise TensorfoldError(f"{f.name}={getattr(options, f.name)!r}: True or False")
