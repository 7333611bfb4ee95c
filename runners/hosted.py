"""Tier 1: a hosted frontier API, OpenAI-compatible (OpenAI, OpenRouter, Together, a gateway) or Anthropic Messages.

The key is read from the environment variable the profile names, sent only in the provider's auth
header, and never logged or echoed: upstream error text is scrubbed of it before it goes anywhere.
Each call has a connect, first-byte and total timeout. Failures that may pass (429, 408, 5xx,
connection errors, timeouts before the first byte) are retried with backoff within a budget, and a
circuit breaker makes the tier unavailable after repeated failures, so the policy can refuse or use
the feature's declared fallback instead of waiting on a broken upstream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import ValidationError

from hardware.errors import ConfigError
from hardware.redact import redact
from runners.wire import anthropic
from runners.errors import InvalidRequest, RunnerFailed, TierUnavailable
from runners.answer import Answer, Delta
from runners.base import Runner, RunnerStatus, register_runner
from runners.capabilities import Capabilities
from runners import http_pool
from runners.hosted_wire import AnthropicWire, HostedOptions, OpenAIWire
from runners.openai_http import error_message, status_error
from runners.request import Request
from runners.resilience import CircuitBreaker, RetryPolicy, retry_after_s

log = logging.getLogger("tier_runner.hosted")
RETRYABLE = {408, 409, 429}  # and every 5xx

class _Retryable(Exception):
    """One failed attempt that a later attempt may get past."""

    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.why, self.retry_after = why, retry_after


@functools.lru_cache(maxsize=256)
def _where(tier: int, model: str, base_url: str) -> str:
    """How messages name a hosted tier: host and port only, so a user:password@ in the URL stays out of them.
    Cached: every request passes it to the capability check, and urlsplit is not free."""
    url = urlsplit(base_url)
    return f"tier {tier} ({model} at {url.hostname}{f':{url.port}' if url.port else ''})"


@register_runner
class HostedRunner(Runner):
    """One class per provider (`variant`), so each declares its capabilities as class attributes."""

    kind = "hosted"
    Options = HostedOptions
    options: HostedOptions
    may_be_optional = True  # not configured until its API key is exported
    Wire: type[OpenAIWire] | type[AnthropicWire]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_url = self.options.base_url  # or, once started, the value of base_url_env when that is set

    @classmethod
    def variant(cls, options: HostedOptions) -> type[HostedRunner]:
        return HostedAnthropicRunner if options.provider == "anthropic" else HostedOpenAIRunner

    @property
    def where(self) -> str:
        return _where(self.tier, self.model_name, self.base_url)

    async def start(self) -> None:
        """Read the base URL override and the key from the environment; a missing key is `not_configured`."""
        opts = self.options
        self.wire = self.Wire(opts)
        self.breaker = CircuitBreaker(opts.circuit_failure_threshold, opts.circuit_cooldown_s)
        self.retry = RetryPolicy(opts.max_attempts, opts.retry_base_s, opts.retry_max_backoff_s, opts.retry_budget_s)
        self.base_url, detail = opts.base_url, ""
        if opts.base_url_env and os.environ.get(opts.base_url_env):
            self.base_url, detail = os.environ[opts.base_url_env], f"base_url from {opts.base_url_env}"
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"tiers.{self.tier}: the environment variable {opts.base_url_env} replaces base_url "
                                  "but is not an http(s) URL; fix it, or unset it to use the profile's base_url")
        self._key: str | None = None
        if opts.api_key_env:
            self._key = os.environ.get(opts.api_key_env)
            if not self._key:
                self.lifecycle.to("not_configured", f"environment variable {opts.api_key_env} is not set: export "
                                                    f"{opts.api_key_env}=<your key> and restart the gateway")
                return
        self._url = self.base_url.rstrip("/") + self.wire.path
        self._session = http_pool.session(self.wire.headers(self._key), connect_timeout_s=opts.connect_timeout_s,
                                          read_timeout_s=opts.read_timeout_s, max_connections=opts.max_connections)
        self.lifecycle.to("ready", detail)

    async def stop(self) -> None:
        if hasattr(self, "_session"):
            await self._session.close()
        self.lifecycle.to("stopped")

    def _state(self) -> str:
        """The lifecycle's state, with an open circuit counted as failed."""
        if self.lifecycle.state == "ready" and hasattr(self, "breaker") and self.breaker.state() == "open":
            return "failed"
        return self.lifecycle.state

    def status(self) -> RunnerStatus:
        status = super().status()
        if status.state == "ready" and hasattr(self, "breaker") and self.breaker.state() != "closed":
            return status.model_copy(update={"state": self._state(), "detail": self.breaker.describe()})
        return status

    def serving(self) -> bool:
        """`status().state == "ready"` without building the status: asked on every request's dispatch."""
        return self._state() == "ready"

    def _redact(self, text: str) -> str:
        return redact(text, [self._key])

    # -- requests ---------------------------------------------------------------------------------
    def _body(self, request: Request, stream: bool) -> dict[str, Any]:
        state = self.lifecycle
        if state.state != "ready":
            raise TierUnavailable(f"{self.where} is {state.state.replace('_', ' ')}: {state.detail}")
        return self.wire.body(request, self.model_name, stream)

    async def answer(self, request: Request) -> Answer:
        return await self._with_retries(self._body(request, stream=False), None)

    async def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        translator = self.wire.translator()
        response, lines, first = await self._with_retries(self._body(request, stream=True), translator)
        try:
            for chunk in first:
                yield chunk
            while not translator.done:
                try:
                    line = await anext(lines)  # each read bounded by the attempt's total_timeout_s deadline
                except StopAsyncIteration:
                    raise self._cut("the stream ended before its last event") from None
                except http_pool.READ_TIMEOUT:  # before the transport errors and TimeoutError: it is both
                    raise self._cut(f"no data for read_timeout_s={self.options.read_timeout_s}") from None
                except http_pool.TRANSPORT_ERRORS as exc:
                    raise self._cut(f"the connection broke mid-stream ({exc.__class__.__name__})") from None
                except TimeoutError:
                    raise self._cut(f"the stream ran past total_timeout_s={self.options.total_timeout_s}") from None
                try:
                    chunks = self._translate(translator, line)
                except RunnerFailed as exc:
                    self.breaker.record_failure("error event mid-stream")
                    raise exc
                for chunk in chunks:
                    yield chunk
        finally:
            response.close()  # a stream left before its end must not go back to the pool half read

    def _cut(self, why: str) -> RunnerFailed:
        self.breaker.record_failure(why)
        return RunnerFailed(f"{self.where} failed mid-stream: {why}; the answer is incomplete, retry the request")

    def _translate(self, translator, line: str) -> list[Delta]:
        try:
            return translator.feed_line(line)
        except RunnerFailed as exc:
            raise RunnerFailed(f"{self.where} {self._redact(exc.message)}") from None
        except (ValueError, ValidationError) as exc:
            raise RunnerFailed(f"{self.where} sent a stream event that is not valid: {exc}") from None

    async def _with_retries(self, body: dict[str, Any], translator):
        """Attempts until one succeeds, or the attempts, the retry budget or the circuit say stop."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            if not self.breaker.allow():
                raise TierUnavailable(f"{self.where} is unavailable: {self.breaker.describe()}")
            try:
                result = await self._attempt(body, translator)
            except _Retryable as failure:
                why = self._redact(failure.why)
                self.breaker.record_failure(why)
                delay = self.retry.delay_s(attempt, started, failure.retry_after)
                if delay is None or self.breaker.state() != "closed":
                    circuit = self.breaker.describe()
                    raise TierUnavailable(f"{self.where} failed after {attempt} attempt(s); last: {why}"
                                          + (f"; {circuit}" if circuit else "")) from None
                log.warning("%s: attempt %d failed (%s); retrying in %.2fs", self.where, attempt, why, delay)
                await asyncio.sleep(delay)
                continue
            except InvalidRequest:
                self.breaker.record_success()  # the upstream answered; the request was at fault
                raise
            except RunnerFailed as exc:
                self.breaker.record_failure(exc.message)
                raise
            except BaseException:
                self.breaker.release_probe()
                raise
            self.breaker.record_success()
            return result

    async def _attempt(self, body: dict[str, Any], translator):
        """One try. Non-streaming: the completion. Streaming: the open response, its lines (each read bounded by
        the attempt's deadline) and the first chunks."""
        opts = self.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.total_timeout_s
        first_byte = min(deadline, loop.time() + opts.first_byte_timeout_s)
        try:
            async with asyncio.timeout_at(first_byte):
                response = await self._session.post(self._url, data=http_pool.dumps(body),
                                                    headers=http_pool.JSON_HEADERS)
        except http_pool.TRANSPORT_ERRORS as exc:  # before TimeoutError: a socket timeout is both
            raise _Retryable(f"unreachable ({exc.__class__.__name__})") from None
        except TimeoutError:
            raise _Retryable(f"no response within first_byte_timeout_s={opts.first_byte_timeout_s}") from None
        try:
            if response.status >= 400:
                await self._raise_for_status(response)
            if translator is None:
                async with asyncio.timeout_at(deadline):
                    data = await response.read()
                response.release()
                try:
                    return self.wire.completion(orjson.loads(data))
                except (ValueError, ValidationError) as exc:
                    raise RunnerFailed(f"{self.where} answered something that is not a chat completion: {exc}") from None
            lines = http_pool.lines(response, deadline)
            first: list[Delta] = []
            async with asyncio.timeout_at(first_byte):
                while not first and not translator.done:
                    first = self._translate(translator, await anext(lines))
            return response, lines, first
        except (*http_pool.TRANSPORT_ERRORS, StopAsyncIteration) as exc:  # before TimeoutError, as above
            response.close()
            raise _Retryable(f"the connection broke before the first event ({exc.__class__.__name__})") from None
        except TimeoutError:
            response.close()
            what = "the whole answer" if translator is None else "the first stream event"
            raise _Retryable(f"no {what} in time (first_byte_timeout_s={opts.first_byte_timeout_s}, "
                             f"total_timeout_s={opts.total_timeout_s})") from None
        except BaseException:
            response.close()
            raise

    async def _raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        status = response.status
        message = self._redact(error_message((await response.read()).decode("utf-8", "replace")))
        if status in RETRYABLE or status >= 500:
            headers = response.headers
            wait = retry_after_s(headers.get("retry-after"))
            if headers.get("retry-after-ms"):
                wait = (retry_after_s(headers["retry-after-ms"]) or 0) / 1000
            raise _Retryable(f"HTTP {status}: {message}", wait)
        if status in (401, 403):
            raise RunnerFailed(f"{self.where} refused the API key from {self.options.api_key_env} (HTTP {status}): "
                               f"{message}; check the key and its permissions")
        raise status_error(status, message, self.where, "base_url")


class HostedOpenAIRunner(HostedRunner):
    Wire = OpenAIWire
    capabilities = Capabilities(tools=True, max_n=8, stream_n=True, media=frozenset({"image", "audio", "file"}))


class HostedAnthropicRunner(HostedRunner):
    """Anthropic's Messages API has no json_schema output: an escalation there is checked by the gate alone."""

    Wire = AnthropicWire
    capabilities = anthropic.CAPABILITIES
