"""The one exception type that means "the user gave bad input" (exit code 2)."""


class UserError(Exception):
    """A configuration, argument or data error the user can fix.

    Entry points (``main.py``, ``eval.py``) catch it, print its message as one line and exit with code 2.
    The message must name the offending key, file or folder and, where possible, what was expected.
    """


EXIT_USER_ERROR = 2


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with its traceback."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    last = lines[-1]
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last
