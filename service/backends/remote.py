"""Remote backend: any OpenAI-compatible server (e.g. vLLM serving LoRA adapters, or another hitl).

The registry version is the upstream model name, so a swap only changes the name asked for.
Upstream input errors (400/413/422) stay the client's 4xx; anything else is a 502/503.
`open_chat` and `relay` are shared with the vLLM fleet backend (`service.backends.vllm`).
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import openai
from openai import AsyncOpenAI

from service.backends.base import (
    Backend, BackendError, BadRequest, Delta, Event, Generation, SamplingParams, Started, Unavailable,
)

CLIENT_ERRORS = {400, 413, 422}


@contextmanager
def upstream_errors() -> Iterator[None]:
    """Map the openai client's errors to the API's: input errors stay 4xx, the rest 502/503."""
    try:
        yield
    except openai.APIStatusError as exc:
        if exc.status_code in CLIENT_ERRORS:
            raise BadRequest(_detail(exc), exc.status_code) from exc
        raise BackendError(f"upstream answered {exc.status_code}: {_detail(exc)}", 502) from exc
    except openai.APIConnectionError as exc:  # includes timeouts
        raise Unavailable(f"upstream unreachable: {exc}") from exc
    except openai.APIError as exc:  # an error event in the middle of the stream
        raise BackendError(f"upstream failed: {exc.message}", 502) from exc


async def open_chat(client: AsyncOpenAI, model: str, messages: list[dict], params: SamplingParams,
                    logprobs: bool = False):
    """Start a streamed chat completion upstream (raises the openai client's own errors); `logprobs` asks for the
    sampled tokens' log-probs, whose mean the review queue reads as the model's confidence. The request's own
    OpenAI fields (`params.upstream`: tools, response_format, n, logprobs...) go as given."""
    optional = {k: v for k, v in (("temperature", params.temperature), ("top_p", params.top_p),
                                  ("stop", list(params.stop) or None), ("seed", params.seed)) if v is not None}
    extra = {**({"logprobs": True} if logprobs else {}), **params.upstream}
    return await client.chat.completions.create(  # unset sampling fields: the upstream's (model's) defaults
        model=model, messages=messages, stream=True, stream_options={"include_usage": True},
        max_tokens=params.max_tokens, **optional, **extra,
    )


class _Choice:
    """One choice assembled from its streamed deltas."""

    def __init__(self, index: int):
        self.index, self.parts, self.calls, self.tokens = index, [], {}, []
        self.finish, self.chunks = "stop", 0

    def add(self, delta) -> None:
        self.chunks += 1
        if delta.content:
            self.parts.append(delta.content)
        for call in delta.tool_calls or ():  # the first delta of a call has its id and name; arguments accumulate
            got = self.calls.setdefault(call.index, {"id": "", "type": "function",
                                                     "function": {"name": "", "arguments": ""}})
            got["id"] = call.id or got["id"]
            if call.function:
                got["function"]["name"] += call.function.name or ""
                got["function"]["arguments"] += call.function.arguments or ""

    def generation(self, version: str, prompt_tokens: int, completion_tokens: int | None, shown: bool) -> Generation:
        logprobs = [t["logprob"] for t in self.tokens]
        return Generation(
            text="".join(self.parts), model_version=version, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens if completion_tokens is not None else len(self.tokens) or self.chunks,
            finish_reason=self.finish, mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
            tool_calls=[self.calls[i] for i in sorted(self.calls)] or None,
            logprobs=self.tokens if shown else None, index=self.index)


async def relay(response, version: str, show_logprobs: bool = False) -> AsyncIterator[Event]:
    """An upstream stream as backend events, stamped with the registry `version` that answers: each choice's
    deltas as sent (`Delta`; token log-probs only when `show_logprobs`, the client's ask), then the choices."""
    choices: dict[int, _Choice] = {}
    usage = None
    yield Started(version, 0)
    with upstream_errors():
        async for chunk in response:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                got = choices.setdefault(choice.index, _Choice(choice.index))
                tokens = None
                if choice.logprobs and choice.logprobs.content:
                    tokens = [t.model_dump(exclude_none=True) for t in choice.logprobs.content]
                    got.tokens += tokens
                delta = choice.delta.model_dump(exclude_none=True, exclude={"role"}) if choice.delta else {}
                if delta == {"content": ""}:  # the role-only opening delta: hitl sends its own
                    delta = {}
                if delta or (tokens and show_logprobs):
                    got.add(choice.delta)
                    yield Delta(choice.index, delta, {"content": tokens} if tokens and show_logprobs else None)
                if choice.finish_reason:
                    got.finish = choice.finish_reason
    done = [choices[i] for i in sorted(choices)] or [_Choice(0)]
    one = len(done) == 1 and usage is not None  # the upstream's count is per choice only when there is one
    out = [c.generation(version, usage.prompt_tokens if usage else 0, usage.completion_tokens if one else None,
                        show_logprobs) for c in done]
    first = out[0]
    yield Generation(**{**first.__dict__, "others": tuple(out[1:]),
                        "usage": usage.model_dump(exclude_none=True) if usage else None})


# what an OpenAI-compatible upstream is sent and answers (`service.schemas.OPTIONAL_FIELDS` less the deprecated)
PASSED_THROUGH = frozenset({"response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
                            "top_logprobs", "n", "messages.tool_calls", "messages.tool_call_id"})


class RemoteBackend(Backend):
    openai_fields = PASSED_THROUGH

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", timeout_s: float = 600):
        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)
        self._model = model

    @property
    def version(self) -> str:
        return self._model

    async def swap(self, base_path, version: str, adapter_path=None) -> None:
        """The remote server must already serve `version` (e.g. a vLLM LoRA adapter of that name)."""
        self._model = version

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]:
        model = self._model
        with upstream_errors():
            response = await open_chat(self._client, model, messages, params)
        async for event in relay(response, model, bool(params.upstream.get("logprobs"))):
            yield event


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("detail") or body.get("message") or exc.message
    return detail if isinstance(detail, str) else str(detail)
