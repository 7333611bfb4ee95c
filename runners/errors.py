"""What a runner raises for a request: one it cannot serve, a tier that is down, a backend that broke."""

from __future__ import annotations

from hardware.errors import TierRunnerError


class InvalidRequest(TierRunnerError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class TierUnavailable(TierRunnerError):
    """A tier is not served by the active profile, or its runner is not ready."""

    status_code = 503
    error_type = "service_unavailable"
    code = "tier_unavailable"


class Overloaded(TierUnavailable):
    """The tier is up but its queue is full; retrying shortly may succeed."""

    code = "queue_full"


class RunnerFailed(TierRunnerError):
    """The backend broke while answering; the request may be retried."""

    status_code = 502
    error_type = "server_error"
    code = "runner_failed"
