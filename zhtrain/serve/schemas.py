"""serve.py's request and response bodies, in OpenAI's shapes where OpenAI has the route.

Requests are strict ("5" is no number, "true" no boolean) and keep unknown fields, so that the unsupported
OpenAI ones (tools, logprobs...) are refused by name rather than ignored. Responses list their fields in the
order clients have always received them; `Response.omit_when_none` names the fields left out when empty, as
OpenAI leaves them out (a stream delta without a role, a chunk without usage).
"""

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# ---- requests -----------------------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ContentPart(Strict):
    type: str
    text: str | None = None


class Message(Strict):
    role: str
    content: str | list[ContentPart] | None = None


class GenerationBody(Strict):
    """What chat completions and completions share: the model, sampling, length, stop strings, streaming."""

    model: str | None = None
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream_options: dict | None = None


class ChatBody(GenerationBody):
    messages: list[Message] = Field(min_length=1)


class CompletionBody(GenerationBody):
    prompt: str | list[str]


class TextsBody(Strict):
    """/v1/classify and /v1/embeddings: a text or a list of them ({"image": base64} items too, for embeddings)."""

    model: str | None = None
    input: str | list[str | dict]


class SimilarityBody(Strict):
    model: str | None = None
    image: str
    texts: list[str] = Field(min_length=1)


# ---- responses ----------------------------------------------------------------------------------------------------


class Response(BaseModel):
    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def leave_out_empty_fields(self, serialize):
        data = serialize(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.omit_when_none)}


class ErrorDetail(Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Response):
    error: ErrorDetail


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(Response):
    """What one stream chunk adds: the role in the first chunk only, no content in the last."""

    omit_when_none = ("role", "content")
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Response):
    index: int = 0
    delta: Delta
    finish_reason: str | None


class ChatCompletionChunk(Response):
    """One server-sent event of a streamed chat answer; the last, with `include_usage`, has usage and no choices."""

    omit_when_none = ("usage",)
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(Response):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(Response):
    """A whole completion, or one chunk of a streamed one (same object name, as OpenAI sends)."""

    omit_when_none = ("usage",)
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "serve.py"


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Classification(Response):
    """One text's class: the best label and its score, every label's score; `labels` for multi-label models."""

    omit_when_none = ("labels",)
    index: int
    label: str
    score: float
    scores: dict[str, float]
    labels: list[str] | None = None


class ClassificationList(Response):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]


class Embedding(Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingUsage(Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Response):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


class Similarity(Response):
    index: int
    text: str
    cosine: float
    probability: float


class SimilarityList(Response):
    object: Literal["list"] = "list"
    model: str
    data: list[Similarity]


class Caption(Response):
    object: Literal["caption"] = "caption"
    model: str
    caption: str


class Health(Response):
    omit_when_none = ("error",)
    status: Literal["ok", "error"]
    task: str
    model: str
    engine: str | None
    in_flight: int
    error: str | None = None
