"""Remote backend: any OpenAI-compatible server (e.g. vLLM serving LoRA adapters, or another hitl).

The registry version is the upstream model name, so a swap only changes the name asked for.
Upstream input errors (400/413/422) stay the client's 4xx; anything else is a 502/503.
`open_chat` and `relay` are shared with the vLLM fleet backend (`service.backends.vllm`).
"""

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import openai
from openai import AsyncOpenAI

from service.backends.base import Backend, BackendError, BadRequest, Event, Generation, SamplingParams, Started, Unavailable

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
    sampled tokens' log-probs, whose mean the review queue reads as the model's confidence."""
    optional = {k: v for k, v in (("temperature", params.temperature), ("top_p", params.top_p),
                                  ("stop", list(params.stop) or None), ("seed", params.seed)) if v is not None}
    return await client.chat.completions.create(  # unset sampling fields: the upstream's (model's) defaults
        model=model, messages=messages, stream=True, stream_options={"include_usage": True},
        max_tokens=params.max_tokens, **optional, **params.upstream, **({"logprobs": True} if logprobs else {}),
    )


async def relay(response, version: str) -> AsyncIterator[Event]:
    """An upstream stream as backend events, stamped with the registry `version` that answers."""
    parts, finish, usage, logprobs = [], "stop", None, []
    yield Started(version, 0)
    with upstream_errors():
        async for chunk in response:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.logprobs and choice.logprobs.content:
                    logprobs += [t.logprob for t in choice.logprobs.content]
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    yield choice.delta.content
                if choice.finish_reason:
                    finish = choice.finish_reason
    yield Generation(
        text="".join(parts), model_version=version,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else len(parts),
        finish_reason=finish, mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
    )


class RemoteBackend(Backend):
    openai_fields = frozenset({"response_format"})

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
        async for event in relay(response, model):
            yield event


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("detail") or body.get("message") or exc.message
    return detail if isinstance(detail, str) else str(detail)
