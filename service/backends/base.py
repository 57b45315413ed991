"""The interface every backend implements: stream events for one chat request."""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """`temperature` / `top_p` None: the upstream's own defaults (a remote backend sends no value)."""

    temperature: float | None = 0.7
    top_p: float | None = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    upstream: dict = field(default_factory=dict, hash=False)  # OpenAI fields passed as given (`openai_fields`)


def generation_defaults(generation_config) -> dict[str, float]:
    """The sampling a checkpoint's `generation_config` asks for when a request sets none: greedy unless
    `do_sample`, else its `temperature` and `top_p` (transformers' defaults 1.0 where it names none)."""
    if not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0, "top_p": 1.0}
    return {"temperature": float(getattr(generation_config, "temperature", None) or 1.0),
            "top_p": float(getattr(generation_config, "top_p", None) or 1.0)}


@dataclass(frozen=True)
class Started:
    """First event of every stream: which model version is answering."""

    model_version: str
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    """An upstream's delta of choice `index` as it sent it (`content` and/or `tool_calls`), with the token
    `logprobs` when the client asked for them."""

    index: int
    delta: dict
    logprobs: dict | None = None


@dataclass(frozen=True)
class Generation:
    """Last event of every stream: the whole reply (choice 0) and its statistics; `others`: choices 1.. of
    a request with `n` > 1; `usage`: the upstream's own totals over all choices."""

    text: str
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    mean_logprob: float | None = None
    extra: dict = field(default_factory=dict)
    tool_calls: list[dict] | None = None  # OpenAI's `tool_calls`, arguments as the model wrote them
    logprobs: list[dict] | None = None  # the token entries of `logprobs.content`, when the client asked
    index: int = 0
    others: tuple["Generation", ...] = ()
    usage: dict | None = None

    @property
    def choices(self) -> list["Generation"]:
        return [self, *self.others]


Event = Started | str | Delta | Generation


class BackendError(Exception):
    """A failure the API reports as `status_code` with this message as its detail."""

    status_code = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class BadRequest(BackendError):
    """The request cannot be served as asked (e.g. prompt longer than the context): a 4xx, not a fault."""

    status_code = 422


class Unavailable(BackendError):
    """The model is not running (closed, still loading) or its upstream cannot be reached."""

    status_code = 503


class Busy(Unavailable):
    """Too many requests are waiting for the model: the client may retry shortly."""

    headers = {"Retry-After": "1"}


class Backend(ABC):
    """Yields `Started`, then text deltas (`str`, choice 0) or upstream deltas (`Delta`), then one `Generation`.

    `openai_fields`: the optional OpenAI request fields (`service.schemas.OPTIONAL_FIELDS`) it honours.
    `sampling_defaults`: temperature / top_p for requests that set none; None: leave them to the upstream."""

    openai_fields: frozenset[str] = frozenset()

    @property
    def sampling_defaults(self) -> dict[str, float] | None:
        return None

    @abstractmethod
    def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]: ...

    @property
    @abstractmethod
    def version(self) -> str:
        """The model version that a request arriving now would get."""

    async def start(self) -> None:
        """Load resources; called once before serving."""

    async def close(self) -> None:
        """Release resources."""

    @abstractmethod
    async def swap(self, base_path: str, version: str, adapter_path: str | None = None) -> None:
        """Switch to another model version without failing requests in flight."""

    async def complete(self, messages: list[dict], params: SamplingParams) -> Generation:
        async for event in self.stream(messages, params):
            if isinstance(event, Generation):
                return event
        raise RuntimeError("backend stream ended without a Generation")
