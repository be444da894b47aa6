"""The package's one error type for problems with what a user gave it.

Every user-facing input problem (an audio file that cannot be decoded, an option out of range, a table with a bad
line, a checkpoint that is not HTS-AT's, a model folder that does not exist, an output folder that cannot be written)
is an [`InputError`] whose message is one line naming the problem and the file, option or tensor. Command-line
programs catch it (and `OSError`, for files the system refuses) and print `PROGRAM: error: MESSAGE` ([`error_line`]),
exiting with status 2; library callers catch it like any `ValueError`.

A command ended by `kill` (SIGTERM) or a closed terminal (SIGHUP) gets [`Stopped`] raised in its main thread, as
Ctrl-C gets `KeyboardInterrupt` ([`stop_signals_raise`]), so that it cleans up as after Ctrl-C: a staged output folder
or file is removed and an earlier one left as it was (the signals' default action ended the process at once and
left the half-written `.partial` folder behind).
"""

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """A problem with the caller's input; `str(error)` is one line that names the file, option or tensor."""


class Stopped(BaseException):
    """The process was asked to stop by a signal (`signum`: SIGTERM, SIGHUP). A `BaseException`, like
    `KeyboardInterrupt`, so that only code that cleans up on every exit sees it. Its exit status is `128 + signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (where the platform has them) raise [`Stopped`] in the main thread; the
    previous handlers are restored after it. Outside the main thread (where handlers cannot be set) it does
    nothing."""
    names = [name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    try:
        previous = {name: signal.signal(getattr(signal, name), _raise_stopped) for name in names}
    except ValueError:  # not the main thread
        previous = {}
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def error_line(error: BaseException) -> str:
    """`error`'s message as the one line a command prints after `error: `.

    Newlines inside a message (from libraries) become spaces. An error re-raised by a `DataLoader` worker carries
    the worker's traceback in its message; only the original message (its last line, after the exception's name)
    is kept.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(" ".join(lines).split()) or type(error).__name__


__all__ = ["InputError", "Stopped", "error_line", "stop_signals_raise"]
