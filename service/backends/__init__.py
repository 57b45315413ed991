"""Model backends behind one small interface: in-process (`local`) or remote OpenAI-compatible (`remote`)."""

from service.backends.base import (
    Backend, BackendError, BadRequest, Delta, Generation, SamplingParams, Started, Unavailable,
)

__all__ = ["Backend", "BackendError", "BadRequest", "Unavailable", "Delta", "Generation", "SamplingParams", "Started"]
