"""The one backoff of the election: jittered exponential, capped (tenacity's ``wait_exponential_jitter``)."""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential_jitter

__all__ = ["backoff"]


def backoff(attempt: int, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 20 ms doubling, plus up to 50 ms of jitter,
    at most ``cap`` (plus the jitter)."""
    wait = wait_exponential_jitter(multiplier=0.02, max=cap, jitter=0.05)
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait(state))
