"""The errors opsbook raises, and the exit code each maps to.

Every message is one line that says what is wrong and how to fix it; the CLI prints it as is.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_EXECUTION_FAILED = 2
EXIT_INVALID = 3


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


class RunbookFailed(OpsbookError):
    """The notebook raised while executing; the archived notebook shows the failing cell."""

    exit_code = EXIT_EXECUTION_FAILED


class StripeAccessError(OpsbookError):
    """Stripe refused or failed a request (bad key, permissions, rate limit, outage)."""


class DemoError(OpsbookError):
    """The embedded demo target could not be started or stopped."""


class UnsafeAction(OpsbookError):
    """A remediation was asked for in a way that could do harm (e.g. on a read-only session)."""
