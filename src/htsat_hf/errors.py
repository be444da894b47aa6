"""The package's one error type for problems with what a user gave it.

Every user-facing input problem (an audio file that cannot be decoded, an option out of range, a table with a bad
line, a checkpoint that is not HTS-AT's, a model folder that does not exist, an output folder that cannot be written)
is an [`InputError`] whose message is one line naming the problem and the file, option or tensor. Command-line
programs catch it (and `OSError`, for files the system refuses) and print `PROGRAM: error: MESSAGE` ([`error_line`]),
exiting with status 2; library callers catch it like any `ValueError`.
"""


class InputError(ValueError):
    """A problem with the caller's input; `str(error)` is one line that names the file, option or tensor."""


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


__all__ = ["InputError", "error_line"]
