"""The errors opsbook raises, and the exit code each maps to.

Every message is one line that says what is wrong and how to fix it; the CLI prints it as is.
"""
from __future__ import annotations

import re
from typing import Any

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_EXECUTION_FAILED = 2
EXIT_INVALID = 3

MAX_QUOTED_CHARS = 200


QUOTE_CHARS = 80
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A value as an error message may show it: repr-quoted, one line, at most ~``limit`` characters,
    with the length said when it was clipped (never a 100 kB echo)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            text = str(value)
        except ValueError:  # more digits than Python will print
            return f"a {value.bit_length()}-bit number"
        size = f"{len(text.lstrip('-'))} digits"
    elif isinstance(value, (list, tuple, dict)):
        text, size = repr(value), f"{len(value)} items"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
        size = f"{len(value) if isinstance(value, str) else len(text)} characters"
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({size})"


def first_line(error: BaseException | str, limit: int = MAX_QUOTED_CHARS) -> str:
    """An error's first non-empty line, clipped: what a one-line message may quote of it.

    A wrapped driver error (SQLAlchemy's, with ``.orig``) is read through to the driver's message."""
    if isinstance(error, BaseException):
        error = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
    return line if len(line) <= limit else f"{line[:limit - 1]}… ({len(line)} characters)"


class OpsbookError(Exception):
    exit_code = EXIT_EXECUTION_FAILED


class InvalidInvocation(OpsbookError):
    """Wrong command line, parameter or configuration: nothing was executed."""

    exit_code = EXIT_INVALID


class ParameterError(InvalidInvocation):
    pass


class ConfigurationError(InvalidInvocation):
    """A target variable, a parameter file or a schema mapping is wrong."""


class SchemaMappingError(ConfigurationError):
    pass


class TargetUnreachable(ConfigurationError):
    """The database or Stripe cannot be reached or refuses our credentials."""


class RunInterrupted(OpsbookError):
    """A signal (SIGTERM from a scheduler, Ctrl-C) ended the run; what ran is archived."""

    exit_code = EXIT_EXECUTION_FAILED

    def __init__(self, signal_name: str):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


class RunbookFailed(OpsbookError):
    """The notebook raised while executing; the archived notebook shows the failing cell."""

    exit_code = EXIT_EXECUTION_FAILED


class StripeAccessError(OpsbookError):
    """Stripe refused or failed a request (bad key, permissions, rate limit, outage)."""


class DamagedRecord(OpsbookError, ValueError):
    """An archived run's JSON cannot be read (cut short, edited, not a run's record)."""


class ArchiveUnavailable(OpsbookError):
    """The remote archive stopped answering after the run had started; its files are kept locally."""


class DemoError(OpsbookError):
    """The embedded demo target could not be started or stopped."""


class UnsafeAction(OpsbookError):
    """A remediation was asked for in a way that could do harm (e.g. on a read-only session)."""
