"""Anthropic SDK errors translated, in one place, into job outcomes.

Who retries: the job does. The SDK client is built with max_retries=0, so a transient error
ends the attempt at once and the job returns to pending with backoff (or the server's
retry-after); retries never multiply and a waiting job holds no worker slot. A 429 or 529
snoozes the job: the wait costs no attempt (see RetryLater).
"""

from __future__ import annotations

import anthropic

from service.jobs.model import JobError, PermanentFailure, RetryLater


def _retry_after(response: object) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


def translate(exc: anthropic.AnthropicError) -> JobError:
    """The outcome a failed model call means for the job."""
    if isinstance(exc, anthropic.APITimeoutError):
        return RetryLater("The request to Claude timed out", kind="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return RetryLater(f"Could not reach the Anthropic API: {exc}", kind="connection")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        retry_after = _retry_after(exc.response)
        if status == 429:
            return RetryLater(
                "Claude's rate limit was reached",
                delay=retry_after,
                kind="rate_limited",
                snooze=True,
            )
        if status == 529:
            return RetryLater(
                "Claude is overloaded", delay=retry_after, kind="overloaded", snooze=True
            )
        if status in (408, 409) or status >= 500:
            return RetryLater(
                f"The Anthropic API answered {status}", delay=retry_after, kind="transient"
            )
        if status == 401:
            return PermanentFailure(
                "The Anthropic API rejected the API key (401); check ANTHROPIC_API_KEY"
            )
        if status == 403:
            return PermanentFailure("The API key may not use this model or resource (403)")
        if status == 413:
            return PermanentFailure("The request was too large for the Anthropic API (413)")
        return PermanentFailure(f"The Anthropic API rejected the request ({status}): {exc.message}")
    return PermanentFailure(f"Unexpected error from the Anthropic SDK: {exc}")
