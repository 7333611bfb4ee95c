"""The few named exceptions of the product; the HTTP layer maps each type to one status."""

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


class InvalidRequest(TierRunnerError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class NotFound(TierRunnerError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class TierUnavailable(TierRunnerError):
    """A tier is not served by the active profile, or its runner is not ready."""

    status_code = 503
    error_type = "service_unavailable"
    code = "tier_unavailable"


class RunnerFailed(TierRunnerError):
    """The backend broke while answering; the request may be retried."""

    status_code = 502
    error_type = "server_error"
    code = "runner_failed"


class BudgetExceeded(TierRunnerError):
    """A feature in `block` mode has spent its budget for the period."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "budget_exceeded"


class Unauthorized(TierRunnerError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(TierRunnerError):
    status_code = 403
    error_type = "permission_error"
    code = "not_allowed"


class RateLimited(TierRunnerError):
    """Over a client key's rate or spend limit; `retry_after` seconds until it may try again."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        if code:
            self.code = code
