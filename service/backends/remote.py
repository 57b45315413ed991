"""Remote backend: any OpenAI-compatible server (e.g. vLLM serving LoRA adapters)."""

from collections.abc import AsyncIterator

from openai import AsyncOpenAI

from service.backends.base import Backend, Event, Generation, SamplingParams, Started


class RemoteBackend(Backend):
    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY"):
        self._client = AsyncOpenAI(base_url=base_url, api_key=api_key)
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
        response = await self._client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True},
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
            stop=list(params.stop) or None, seed=params.seed,
        )
        parts, finish, usage, started = [], "stop", None, False
        async for chunk in response:
            if not started:
                started = True
                yield Started(model, 0)
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    yield choice.delta.content
                if choice.finish_reason:
                    finish = choice.finish_reason
        yield Generation(
            text="".join(parts), model_version=model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else len(parts),
            finish_reason=finish,
        )
