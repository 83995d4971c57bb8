"""The generate task's routes: OpenAI's chat completions and completions, whole or streamed.

Streams are server-sent events, one chunk per piece of text as it is generated, ending with `data: [DONE]`; a
client that disconnects cancels its generation. Every request takes one of --max_concurrent_requests slots
until its answer is over.
"""

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from zhtrain.serve import routes
from zhtrain.serve.batching import SEED_REFUSAL, GenerationRequest
from zhtrain.serve.errors import ApiError, error_body
from zhtrain.serve.model import ServeError, TextStream
from zhtrain.serve.schemas import (
    AssistantMessage,
    ChatBody,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    CompletionBody,
    CompletionChoice,
    Delta,
    GenerationBody,
    Message,
    Usage,
)
from zhtrain.serve.state import ServerState

UNSUPPORTED = ("tools", "functions", "tool_choice", "logit_bias", "suffix", "logprobs", "top_logprobs", "echo")

router = APIRouter()


# a stream is a StreamingResponse, which FastAPI sends as it is; the model describes the whole answer
@router.post(routes.CHAT_COMPLETIONS, response_model=ChatCompletion)
async def chat_completions(body: ChatBody, request: Request) -> ChatCompletion | StreamingResponse:
    state = request.app.state.serve
    state.check_model(body.model)
    try:
        prompt_ids = state.served.chat_prompt_ids([text_of(m) for m in body.messages])
    except ServeError as exc:
        raise ApiError(400, str(exc), "messages") from None
    return await answer(state, "chat", prompt_ids, body)


@router.post(routes.COMPLETIONS, response_model=Completion)
async def completions(body: CompletionBody, request: Request) -> Completion | StreamingResponse:
    state = request.app.state.serve
    state.check_model(body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise ApiError(400, "`prompt` must be one non-empty text", "prompt")
    return await answer(state, "completion", state.served.completion_prompt_ids(prompts[0]), body)


def text_of(message: Message) -> dict:
    """An OpenAI message as {"role", "content"}: text parts joined; images are refused."""
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" for part in content):
            raise ApiError(400, "only text content is supported in messages", "messages")
        content = "".join(part.text or "" for part in content)
    return {"role": message.role, "content": (content or "").strip()}


def generation_settings(state: ServerState, body: GenerationBody, prompt_ids: list[int]) -> dict:
    """The request's sampling and length settings within the server's limits, or a 400 that names the limit."""
    unsupported = [name for name in UNSUPPORTED if (body.model_extra or {}).get(name)]
    if unsupported or body.n != 1:
        raise ApiError(
            400, f"not supported by serve.py: {', '.join(unsupported) or 'n other than 1'}", (unsupported or ["n"])[0]
        )
    args, served = state.args, state.served
    asked = body.max_completion_tokens or body.max_tokens
    room = served.context - len(prompt_ids) if served.context else args.max_tokens
    max_tokens = asked or max(1, min(args.max_tokens, room))  # left out: as long as the context allows
    if max_tokens > args.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {args.max_tokens}", "max_tokens")
    if len(prompt_ids) > args.max_prompt_tokens:
        raise ApiError(
            400, f"the prompt is {len(prompt_ids)} tokens, over the limit of {args.max_prompt_tokens}", "messages"
        )
    if served.context and len(prompt_ids) + max_tokens > served.context:
        raise ApiError(
            400,
            f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceed the model's context of {served.context} tokens",
            "max_tokens",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 16:
        raise ApiError(400, "at most 16 stop strings", "stop")
    if body.seed is not None and (body.temperature or 0) > 0 and not getattr(state.engine, "per_request_seed", True):
        raise ApiError(400, SEED_REFUSAL, "seed")  # before a stream starts: a refusal mid-stream would be no 400
    defaults = served.generation_defaults
    temperature = defaults["temperature"] if body.temperature is None else body.temperature
    top_p = defaults["top_p"] if body.top_p is None else body.top_p
    return {"max_new_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": body.seed, "stop": stop}


async def generate(state: ServerState, prompt_ids: list[int], settings: dict, events: asyncio.Queue):
    """Submit one generation; yields (text piece, finish reason or None, tokens so far); cancels it when left early."""
    loop = asyncio.get_running_loop()
    stop = settings.pop("stop")
    request = GenerationRequest(
        prompt_ids,
        stop_ids=state.served.stop_ids,
        deliver=lambda *e: loop.call_soon_threadsafe(events.put_nowait, e),
        **settings,
    )
    try:
        state.engine.submit(request)
    except ValueError as exc:
        raise ApiError(400, str(exc), "seed") from None
    stream, finished = TextStream(state.served, stop), False
    try:
        while stream.finish_reason is None:
            ids, finished, error = await events.get()
            if error:
                raise RuntimeError(error)
            piece = stream.add(ids, finished, request.max_new_tokens)
            yield piece, stream.finish_reason, len(stream.ids)
    finally:
        if not finished:  # a stop string, or the client went away
            state.engine.cancel(request.request_id)
            state.metrics.count("cancelled_requests" if stream.finish_reason is None else "stop_string_requests")
        state.metrics.count("generated_tokens", len(stream.ids))


def chunk(kind: str, rid: str, model: str, piece: str | None, finish: str | None, first: bool = False):
    """One streamed event: a chat delta (the role in the first) or a completion's text."""
    if kind == "chat":
        delta = Delta(role="assistant", content=piece or "") if first else Delta(content=piece or None)
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=rid, created=int(time.time()), model=model, choices=[choice])
    choice = CompletionChoice(text=piece or "", finish_reason=finish)
    return Completion(id=rid, created=int(time.time()), model=model, choices=[choice])


def event(body) -> str:
    # json.dumps, not model_dump_json: the events keep the bytes clients have always read (`"key": value`)
    return f"data: {json.dumps(body.model_dump(), ensure_ascii=False)}\n\n"


async def sse(state: ServerState, kind: str, prompt_ids, settings, include_usage: bool):
    """The server-sent events of one streamed answer (a generation error ends it with an error event)."""
    rid, name = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", state.served.name
    tokens = 0
    try:
        if kind == "chat":
            yield event(chunk(kind, rid, name, "", None, first=True))
        async for piece, finish, count in generate(state, prompt_ids, settings, asyncio.Queue()):
            tokens = count
            if piece or finish:
                yield event(chunk(kind, rid, name, piece, finish))
        if include_usage:
            last = chunk(kind, rid, name, "", None)
            last.choices, last.usage = [], Usage.of(len(prompt_ids), tokens)
            yield event(last)
    except RuntimeError as exc:
        yield event(error_body(500, str(exc)))
    finally:
        state.free_slot()
    yield "data: [DONE]\n\n"


async def answer(
    state: ServerState, kind: str, prompt_ids: list[int], body: GenerationBody
) -> ChatCompletion | Completion | StreamingResponse:
    """The route's response: a stream of events, or the whole answer with its usage."""
    settings = generation_settings(state, body, prompt_ids)
    state.take_slot()
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(sse(state, kind, prompt_ids, settings, include_usage), media_type="text/event-stream")
    text, finish, tokens = "", None, 0
    try:
        async for piece, reason, count in generate(state, prompt_ids, settings, asyncio.Queue()):
            text, finish, tokens = text + piece, reason, count
    except RuntimeError as exc:
        raise ApiError(500, str(exc)) from None
    finally:
        state.free_slot()
    usage, rid, created, name = (
        Usage.of(len(prompt_ids), tokens),
        uuid.uuid4().hex,
        int(time.time()),
        state.served.name,
    )
    if kind == "chat":
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)
        return ChatCompletion(id=f"chatcmpl-{rid}", created=created, model=name, choices=[choice], usage=usage)
    choice = CompletionChoice(text=text, finish_reason=finish)
    return Completion(id=f"cmpl-{rid}", created=created, model=name, choices=[choice], usage=usage)
