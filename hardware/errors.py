"""The ground floor's errors: the base every product error derives from, and a bad configuration.

Errors that requests meet live with their layer: `runners/errors.py` (a request a tier cannot serve,
a tier that is down or broke) and `tiers/errors.py` (routing, keys, limits, budgets). Each class
carries its HTTP status and OpenAI error type; the edge maps the type, never the message.
"""

from __future__ import annotations


class TierRunnerError(Exception):
    """Base class: the message always says what to do next."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(TierRunnerError):
    """A configuration file is missing or invalid; raised at load, never mid-request."""

    code = "invalid_config"
