"""OpenAI-compatible request and response models for the chat API."""

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


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


class FunctionCall(BaseModel):
    name: Text = Field(min_length=1, max_length=200)
    arguments: Text = Field(description="The arguments as a JSON string, as the model wrote them.")


class ToolCall(BaseModel):
    """A call an assistant turn makes (OpenAI's `tool_calls[]`)."""

    id: Text = Field(min_length=1, max_length=100)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[TextPart] | None = Field(
        None, description="Required but for an assistant turn with `tool_calls`.")
    tool_calls: list[ToolCall] | None = Field(None, min_length=1, description="An assistant turn's tool calls.")
    tool_call_id: Text | None = Field(None, max_length=100, description="A `tool` message: the call it answers.")

    @model_validator(mode="after")
    def _shape(self) -> "ChatMessage":
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (but for an assistant message with tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, Any]:
        """The message as it is logged and passed upstream: text content, and its tool fields when it has them."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: plain text, any JSON object, or JSON matching `json_schema`."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


# OpenAI request fields a backend may or may not honour (`Backend.openai_fields`); one it cannot is a 422 naming it.
# `n` counts when above 1; the two `messages.*` names stand for tool turns in the history.
OPTIONAL_FIELDS = ("response_format", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
                   "logprobs", "top_logprobs", "n", "messages.tool_calls", "messages.tool_call_id")
UPSTREAM = "Passed to an OpenAI-compatible upstream (`HITL_BACKEND=openai` or `vllm`) and logged with the reply; " \
           "the local backend answers 422 naming the field."
MAX_CHOICES = 8


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [{"model": "hitl", "messages": [{"role": "user", "content": "Hi!"}]}]},
    )

    model: Text | None = Field(None, description="Ignored: the champion (or its canary) answers.")
    messages: list[ChatMessage] = Field(min_length=1, description="The history; assistant turns may carry "
                                        "`tool_calls` and `tool` turns answer them by `tool_call_id` (upstream "
                                        "backends only).")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="Sampling seed (a 64-bit integer).")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices per request. Above 1: " + UPSTREAM + " Each choice "
                   "is logged as its own reply: choice 0 in the request's conversation, each other one in a "
                   "conversation of its own (`hitl.choices`) with a copy of the history, `forked_from` the first.")
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="With `stream`: `include_usage` adds a last "
                                                 "chunk with empty `choices` and the `usage`, as OpenAI does.")
    response_format: ResponseFormat | None = Field(None, description=UPSTREAM)
    tools: list[dict[str, Any]] | None = Field(None, description=UPSTREAM + " Stored on each reply (`tools`).")
    tool_choice: str | dict[str, Any] | None = Field(
        None, description=UPSTREAM + " `auto` needs an upstream that parses tool calls (vLLM: "
        "`--enable-auto-tool-choice --tool-call-parser ...`); a named function or `required` needs none.")
    parallel_tool_calls: bool | None = Field(None, description=UPSTREAM)
    functions: list[dict[str, Any]] | None = Field(None, description="Deprecated by OpenAI: use `tools` (422).")
    function_call: str | dict[str, Any] | None = Field(None, description="Deprecated by OpenAI: use `tool_choice` "
                                                       "(422).")
    logprobs: bool | None = Field(None, description=UPSTREAM + " `false` asks for nothing.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description=UPSTREAM + " Needs `logprobs: true`.")
    user: Text | None = Field(None, max_length=200, description="End-user id, kept with the conversation.")
    conversation_id: Text | None = Field(None, max_length=40, description="Continue this logged conversation.")

    def optional_fields(self) -> list[str]:
        """The `OPTIONAL_FIELDS` this request uses (`logprobs: false`, `response_format: text` and `n: 1` ask for
        nothing)."""
        used = [f for f in OPTIONAL_FIELDS if "." not in f and getattr(self, f) is not None]
        if self.logprobs is False:
            used.remove("logprobs")
        if self.response_format is not None and self.response_format.type == "text":
            used.remove("response_format")
        if self.n == 1:
            used.remove("n")
        if any(m.tool_calls for m in self.messages):
            used.append("messages.tool_calls")
        if any(m.role == "tool" for m in self.messages):
            used.append("messages.tool_call_id")
        return used

    def upstream_fields(self) -> dict[str, Any]:
        """The request fields of `optional_fields` as sent upstream (the history travels in `messages`)."""
        used = [f for f in self.optional_fields() if "." not in f]
        return self.model_dump(include=set(used), exclude_none=True, mode="json")

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops


class ChoiceInfo(BaseModel):
    index: int
    conversation_id: str
    message_id: str


class HitlInfo(BaseModel):
    conversation_id: str = Field(description="The conversation to continue (choice 0's).")
    message_id: str = Field(description="The logged reply (choice 0's), to rate or correct.")
    model_version: str
    choices: list[ChoiceInfo] | None = Field(None, description="With `n` > 1: where each choice is logged.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="None when the reply is only tool calls.")
    tool_calls: list[ToolCall] | None = Field(None, description="The model's tool calls, as the upstream made them.")


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: dict[str, Any] | None = Field(None, description="With `logprobs`: the upstream's `{content: [...]}`.")


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
          index: int = 0, logprobs: dict | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [choice], **extra,
    }
