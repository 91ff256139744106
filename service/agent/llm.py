"""Which LLM drafts, and how its failures count for the job that called it.

- `OPENAI_BASE_URL` set: an OpenAI-compatible server (vLLM, Ollama, a gateway). A model
  name OpenAI knows goes through `llama_index.llms.openai.OpenAI`; any other name through
  `OpenAILike`, which needs no model table.
- only `OPENAI_API_KEY` set: OpenAI.
- neither: the offline drafter.

The client's own retries are off: an LLM call is a job, and the job queue retries it with
backoff (honouring Retry-After), durably, and ends the run with the reason when it gives up.

Importing this module is cheap: LlamaIndex and the OpenAI client are imported by `build_llm`,
which the agent's loader runs in a thread (service/agent/loader.py).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..jobs import PermanentError, TransientError

if TYPE_CHECKING:
    import openai
    from llama_index.core.llms.function_calling import FunctionCallingLLM


@dataclass(frozen=True, slots=True)
class LlmSettings:
    model: str
    api_key: str | None
    base_url: str | None
    timeout_seconds: float
    context_window: int
    temperature: float


def describe(settings: LlmSettings) -> str:
    if settings.base_url:
        return f"{settings.model} at {settings.base_url}"
    if settings.api_key:
        return f"OpenAI {settings.model}"
    return "the offline drafter (no OPENAI_API_KEY or OPENAI_BASE_URL)"


def build_llm(settings: LlmSettings) -> FunctionCallingLLM:
    """Blocking (seconds of imports): call it in a thread, never on the event loop."""
    from llama_index.llms.openai import OpenAI
    from llama_index.llms.openai.utils import openai_modelname_to_contextsize

    from .offline import OfflineDrafter

    if not settings.base_url and not settings.api_key:
        return OfflineDrafter()
    # The OpenAI client imports its API resources and its HTTP transport at the first
    # request (about 1.5 s of imports on the event loop, where job leases are renewed):
    # import them now, in the loader's thread.
    for module in ("openai.resources", "httpcore"):
        importlib.import_module(module)
    common: dict[str, Any] = dict(model=settings.model, timeout=settings.timeout_seconds, max_retries=0,
                  temperature=settings.temperature, api_base=settings.base_url or None)
    # Local servers ignore the key, but the OpenAI client refuses to start without one.
    api_key = settings.api_key or "not-needed"
    try:
        openai_modelname_to_contextsize(settings.model)
        known = True
    except ValueError:
        known = False
    if known:
        return OpenAI(api_key=api_key, **common)
    if not settings.base_url:
        raise ValueError(f"OpenAI does not know the model {settings.model!r}; set COUNTERSIGN_LLM_MODEL, or "
                         "OPENAI_BASE_URL for an OpenAI-compatible server")
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(api_key=api_key, is_chat_model=True, is_function_calling_model=True,
                      context_window=settings.context_window, **common)


def job_error(exc: BaseException) -> BaseException:
    """The job outcome an LLM client error stands for: retry later, or give up now."""
    # Never imports the client on the loop: an error of a client never loaded is not its own.
    if "openai" not in sys.modules:
        return exc
    import openai  # loaded already: a lookup in sys.modules

    if isinstance(exc, openai.RateLimitError):
        return TransientError(f"the LLM is rate limiting (429): {_message(exc)}", retry_after=_retry_after(exc))
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return TransientError(f"the LLM did not answer: {type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return TransientError(f"the LLM failed ({exc.status_code}): {_message(exc)}", retry_after=_retry_after(exc))
        return PermanentError(f"the LLM refused the request ({exc.status_code}): {_message(exc)}")
    return exc


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    return str(exc)[:500]


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
