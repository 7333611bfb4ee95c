"""What the gateway itself refuses: unknown names, missing or wrong keys, limits and budgets."""

from __future__ import annotations

from hardware.errors import TierRunnerError


class NotFound(TierRunnerError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


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


class LedgerUnavailable(TierRunnerError):
    """The ledger database is down: what must read it now (feedback) cannot; answers are still served."""

    status_code = 503
    error_type = "service_unavailable"
    code = "ledger_unavailable"


class CacheUnavailable(TierRunnerError):
    """The semantic cache's backend (Redis) fails: answers are served by the model; invalidation must wait."""

    status_code = 503
    error_type = "service_unavailable"
    code = "cache_unavailable"


class LimitsUnavailable(TierRunnerError):
    """A fail_closed key's limits live in Redis, which does not answer: refused until it does (never a 500)."""

    status_code = 503
    error_type = "service_unavailable"
    code = "limits_unavailable"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after
