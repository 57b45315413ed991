"""OpenAI-compatible request and response models for the chat API."""

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _encodable(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer or database accepts: refuse them here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid UTF-8: lone surrogate at position {exc.start}") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: plain text, any JSON object, or JSON matching `json_schema`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


# OpenAI request fields a backend may or may not honour (`Backend.openai_fields`); one it cannot is a 422 naming it
OPTIONAL_FIELDS = ("response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                   "logprobs", "top_logprobs")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "hitl", "messages": [{"role": "user", "content": "Hi!"}]}]},
    )

    model: Text | None = Field(None, description="Ignored: the champion (or its canary) answers.")
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="Sampling seed (a 64-bit integer).")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="With `stream`: `include_usage` adds a last "
                                                 "chunk with empty `choices` and the `usage`, as OpenAI does.")
    response_format: ResponseFormat | None = Field(
        None, description="Passed to an OpenAI-compatible upstream (`HITL_BACKEND=openai` or `vllm`); the local "
        "backend answers 422.")
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported yet: 422 naming the field.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Not supported yet: 422 naming the field.")
    parallel_tool_calls: bool | None = Field(None, description="Not supported yet: 422 naming the field.")
    functions: list[dict[str, Any]] | None = Field(None, description="Not supported yet: 422 naming the field.")
    function_call: str | dict[str, Any] | None = Field(None, description="Not supported yet: 422 naming the field.")
    logprobs: bool | None = Field(None, description="Not supported yet: `true` is a 422 naming the field.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Not supported yet: 422 naming the field.")
    user: Text | None = Field(None, max_length=200, description="End-user id, kept with the conversation.")
    conversation_id: Text | None = Field(None, max_length=40, description="Continue this logged conversation.")

    def optional_fields(self) -> list[str]:
        """The `OPTIONAL_FIELDS` this request uses (`logprobs: false` and `response_format: text` ask for nothing)."""
        used = [f for f in OPTIONAL_FIELDS if getattr(self, f) not in (None, False)]
        if self.response_format is not None and self.response_format.type == "text":
            used.remove("response_format")
        return used

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops


class HitlInfo(BaseModel):
    conversation_id: str
    message_id: str
    model_version: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    hitl: HitlInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "hitl"
    aliases: list[str] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def chunk(completion_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra,
    }
