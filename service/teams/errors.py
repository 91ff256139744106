"""Bot Connector failures sorted into retry-later and give-up, the way Teams asks bots to."""

from __future__ import annotations

from typing import Any

from botbuilder.schema import ErrorResponseException
from msrest.exceptions import ClientRequestError, HttpOperationError

from ..jobs import PermanentError, TransientError

# Teams: retry 412, 429, 502, 504 with backoff, honouring Retry-After; 503 and 500 too.
RETRYABLE = {408, 412, 429, 500, 502, 503, 504}


class Throttled(TransientError):
    """A 429: the conversation's pace must slow down, not only this job."""


def retry_after_seconds(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def classify_sdk_error(exc: BaseException, conversation_id: str) -> TransientError | PermanentError:
    if isinstance(exc, (ErrorResponseException, HttpOperationError)) and exc.response is not None:
        status = exc.response.status_code
        retry_after = retry_after_seconds(exc.response.headers)
        text = f"Bot Connector answered HTTP {status} for conversation {conversation_id}"
        error = getattr(exc, "error", None)
        code = getattr(getattr(error, "error", None), "code", None)
        if code:
            text += f" ({code})"
        if status == 429:
            return Throttled(text, retry_after=retry_after)
        if status in RETRYABLE:
            return TransientError(text, retry_after=retry_after)
        return PermanentError(text)
    if isinstance(exc, ClientRequestError):  # msrest gave up after repeated 5xx or connection errors
        return TransientError(f"Bot Connector request failed for conversation {conversation_id}: {exc}")
    return TransientError(f"Bot Connector call failed for conversation {conversation_id}: {type(exc).__name__}: {exc}")
