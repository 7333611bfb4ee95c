"""Retries with backoff and a circuit breaker for remote runners; no HTTP and no provider knowledge here.

A retry waits `Retry-After` when the server sent one, else an exponential backoff with jitter. It is
given up when the attempts or the time budget would run out. The breaker counts consecutive failed
attempts: at the threshold it opens (the tier is unavailable), after the cool-down it lets one probe
through (half-open), and that probe closes it again or re-opens it.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_s: float = 0.5
    max_backoff_s: float = 8.0
    budget_s: float = 30.0

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Equal jitter: half of the exponential step, plus a random share of the other half."""
        step = min(self.max_backoff_s, self.base_s * 2 ** retry)
        return step / 2 + (rng or random).uniform(0, step / 2)

    def delay_s(self, attempt: int, started: float, retry_after_s: float | None, now: float | None = None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when the attempts or the budget are spent."""
        if attempt >= self.max_attempts:
            return None
        delay = retry_after_s if retry_after_s is not None else self.backoff_s(attempt - 1)
        elapsed = (now if now is not None else time.monotonic()) - started
        if elapsed + delay > self.budget_s:
            return None
        return delay


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


@dataclass
class CircuitBreaker:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    last_failure: str = ""
    probing: bool = field(default=False)

    def state(self, now: float | None = None) -> CircuitState:
        if self.opened_at is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "half_open" if now - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time."""
        state = self.state()
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        self.failures, self.opened_at, self.probing, self.last_failure = 0, None, False, ""

    def record_failure(self, why: str) -> None:
        self.failures += 1
        self.last_failure = why
        if self.probing or self.failures >= self.failure_threshold:
            self.opened_at = time.monotonic()
        self.probing = False

    def release_probe(self) -> None:
        """A probe that ended without a verdict on the upstream (e.g. the request was invalid or cancelled)."""
        self.probing = False

    def describe(self) -> str:
        state = self.state()
        if state == "closed":
            return ""
        if state == "half_open":
            return f"circuit half-open after {self.failures} consecutive failures; the next request probes the upstream"
        wait = self.cooldown_s - (time.monotonic() - self.opened_at)
        return (f"circuit open after {self.failures} consecutive failures (last: {self.last_failure}); "
                f"next probe in {max(wait, 0):.1f}s")
