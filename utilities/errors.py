"""The one exception type that means "the user gave bad input" (exit code 2), and how entry points report it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from utilities.suggestions import suggest_key


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


def report_user_error(exc: BaseException) -> int:
    """Print the error's one line on stderr, as every entry point does, and return the exit code 2."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USER_ERROR


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a bad choice) are `UserError`s: one line and exit code 2.

    An unknown flag gets a did-you-mean among this parser's own flags (`utilities.suggestions.suggest_key`).
    """

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            flag = next((token.split("=", 1)[0] for token in extras if token.startswith("--")), None)
            names = [option[2:] for option in self._option_string_actions if option.startswith("--")]
            close = suggest_key(flag, names) if flag else None
            self.error(f"{message}; did you mean '--{close}'?" if close else message)
        return parsed

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")
