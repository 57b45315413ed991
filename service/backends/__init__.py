"""Model backends behind one small interface: in-process (`local`) or remote OpenAI-compatible (`remote`)."""

from service.backends.base import Backend, Generation, SamplingParams, Started

__all__ = ["Backend", "Generation", "SamplingParams", "Started"]
