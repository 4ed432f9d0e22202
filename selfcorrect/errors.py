"""User-facing errors.

Anything a user can cause (a bad file, a bad option, an unknown model) raises
:class:`SelfCorrectError` with one sentence that names *what* is wrong and
*where*.  The CLI prints that sentence and exits non-zero without a traceback;
library users can catch it like any ``ValueError``.
"""


class SelfCorrectError(ValueError):
    """A problem with the user's input: configuration, data, model spec, ..."""


class DataError(SelfCorrectError):
    """A dataset file or row is malformed (the message names file, line, field)."""


class ConfigError(SelfCorrectError):
    """A configuration or command-line value is invalid."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (its type's name when empty): the cause, for a one-line
    error of our own."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
