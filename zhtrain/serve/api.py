"""serve.py's HTTP side: the FastAPI app, OpenAI-compatible routes, the task routes, limits, auth and metrics.

Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for bad input and
for anything over a limit, 401 without the API key, 404 for a route of another task, 429 when too many
requests are in flight. Streams are server-sent events, one chunk per piece of text as it is generated,
ending with `data: [DONE]`; a client that disconnects cancels its generation.
"""

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from zhtrain.serve.batching import SEED_REFUSAL, GenerationRequest
from zhtrain.serve.model import Served, ServeError, TextStream
from zhtrain.serve.tasks import TASK_ROUTES, Strict

PAGE = Path(__file__).resolve().parent / "page.html"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
ERROR_TYPES |= {429: "rate_limit_error", 503: "service_unavailable_error"}
UNSUPPORTED = ("tools", "functions", "tool_choice", "logit_bias", "suffix", "logprobs", "top_logprobs", "echo")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROUTES_OF_TASK = {
    "generate": ("/v1/chat/completions", "/v1/completions"),
    "classify": ("/v1/classify",),
    "clip": ("/v1/embeddings", "/v1/similarity"),
    "caption": ("/v1/caption",),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


class ContentPart(Strict):
    type: str
    text: str | None = None


class Message(Strict):
    role: str
    content: str | list[ContentPart] | None = None


class GenerationBody(Strict):
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


class Metrics:
    """Request counts by route and status, latency histograms, generated tokens: Prometheus' text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.latency = defaultdict(lambda: [0.0, 0, [0] * len(LATENCY_BUCKETS)])
        self.tokens = Counter()

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] += 1
            entry = self.latency[route]
            entry[0], entry[1] = entry[0] + seconds, entry[1] + 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                entry[2][i] += seconds <= bound

    def count(self, name: str, value: int = 1) -> None:
        with self.lock:
            self.tokens[name] += value

    def render(self, gauges: dict) -> str:
        with self.lock:
            lines = ["# TYPE serve_requests_total counter"]
            lines += [
                f'serve_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())
            ]
            lines.append("# TYPE serve_request_seconds histogram")
            for route, (total, count, buckets) in sorted(self.latency.items()):
                for bound, n in zip(LATENCY_BUCKETS, buckets):
                    lines.append(f'serve_request_seconds_bucket{{route="{route}",le="{bound}"}} {n}')
                lines.append(f'serve_request_seconds_bucket{{route="{route}",le="+Inf"}} {count}')
                lines += [f'serve_request_seconds_sum{{route="{route}"}} {total:.6f}']
                lines += [f'serve_request_seconds_count{{route="{route}"}} {count}']
            lines += [f"serve_{name}_total {n}" for name, n in sorted(self.tokens.items())]
        lines += [f"serve_{name} {value}" for name, value in gauges.items()]
        return "\n".join(lines) + "\n"


class Guard:
    """ASGI middleware: the body-size limit, the API key, and the metrics of every request."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope["path"], [500]
        route = path if path in self.state.routes else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            problem = self.refusal(scope)
            body = await self.read_body(receive) if problem is None else b""
            if problem is None and body is None:
                problem = ApiError(
                    400, f"the request body is over --max_request_bytes ({self.state.args.max_request_bytes})"
                )
            if problem is not None:
                response = JSONResponse(error_body(problem.status, problem.message, code=problem.code), problem.status)
                return await response(scope, receive, send_status)
            await self.app(scope, self.replay(body, receive), send_status)
        finally:
            self.state.metrics.observe(route, status[0], time.perf_counter() - start)

    def refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.state.args.max_request_bytes:
            return ApiError(400, f"the request body is over --max_request_bytes ({self.state.args.max_request_bytes})")
        key = self.state.args.api_key
        guarded = scope["path"].startswith("/v1/") or scope["path"] == "/metrics"
        if key and guarded:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return ApiError(
                    401, "a valid API key is required: send `Authorization: Bearer KEY`", code="invalid_api_key"
                )
        return None

    async def read_body(self, receive) -> bytes | None:
        """The whole body, or None past the limit (a chunked body has no Content-Length to check first)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.state.args.max_request_bytes:
                return None
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def replay(body: bytes, receive):
        sent = [False]

        async def replayed():
            if sent[0]:
                return await receive()  # what comes after the body: the disconnect
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replayed


class ServerState:
    """What the routes share: the model, its engine, the arguments, the metrics and the requests in flight."""

    def __init__(self, served: Served, engine, args):
        self.served, self.engine, self.args = served, engine, args
        self.metrics, self.in_flight, self.lock = Metrics(), 0, threading.Lock()
        self.model_lock = threading.Lock()  # classifier, CLIP and captioner: one forward at a time
        self.routes = {"/", "/health", "/metrics", "/v1/models", *(r for rs in ROUTES_OF_TASK.values() for r in rs)}

    def take_slot(self) -> None:
        with self.lock:
            if self.in_flight >= self.args.max_concurrent_requests:
                raise ApiError(
                    429,
                    f"too many requests in flight (--max_concurrent_requests {self.args.max_concurrent_requests}); retry",
                )
            self.in_flight += 1

    def free_slot(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def require(self, task: str, route: str, model: str | None) -> None:
        if self.served.task != task:
            routes = ", ".join(ROUTES_OF_TASK[self.served.task])
            raise ApiError(
                404, f"{route} needs another kind of model; this server serves a {self.served.task} model: {routes}"
            )
        if model is not None and model != self.served.name:
            raise ApiError(
                404,
                f"model `{model}` is not served here; this server serves `{self.served.name}`",
                "model",
                "model_not_found",
            )


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


def chunk(kind: str, rid: str, model: str, piece: str | None, finish: str | None, first: bool = False) -> dict:
    if kind == "chat":
        delta = {"role": "assistant", "content": piece or ""} if first else ({"content": piece} if piece else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
    choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [choice]}


async def sse(state: ServerState, kind: str, prompt_ids, settings, include_usage: bool):
    """The server-sent events of one streamed answer (a generation error ends it with an error event)."""
    rid, name = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", state.served.name
    tokens = 0
    try:
        if kind == "chat":
            yield f"data: {json.dumps(chunk(kind, rid, name, '', None, first=True), ensure_ascii=False)}\n\n"
        async for piece, finish, count in generate(state, prompt_ids, settings, asyncio.Queue()):
            tokens = count
            if piece or finish:
                yield f"data: {json.dumps(chunk(kind, rid, name, piece, finish), ensure_ascii=False)}\n\n"
        if include_usage:
            usage = {"id": rid, "object": chunk(kind, rid, name, "", None)["object"], "model": name, "choices": []}
            usage["usage"] = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": tokens,
                "total_tokens": len(prompt_ids) + tokens,
            }
            yield f"data: {json.dumps(usage)}\n\n"
    except RuntimeError as exc:
        yield f"data: {json.dumps(error_body(500, str(exc)))}\n\n"
    finally:
        state.free_slot()
    yield "data: [DONE]\n\n"


async def answer(state: ServerState, kind: str, prompt_ids: list[int], body: GenerationBody):
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
    usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": tokens, "total_tokens": len(prompt_ids) + tokens}
    rid, created = uuid.uuid4().hex, int(time.time())
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": created,
            "model": state.served.name,
            "choices": [choice],
            "usage": usage,
        }
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": created,
        "model": state.served.name,
        "choices": [choice],
        "usage": usage,
    }


def page(state: ServerState) -> str:
    served = state.served
    config = {"task": "chat" if served.can_chat else "completion" if served.task == "generate" else served.task}
    config |= {"model": served.name, "description": served.kind.description, "needs_key": bool(state.args.api_key)}
    return PAGE.read_text(encoding="utf-8").replace("/*CONFIG*/null", json.dumps(config, ensure_ascii=False))


def serve_state(request: Request) -> ServerState:
    return request.app.state.serve


async def chat_completions(body: ChatBody, request: Request):
    state = serve_state(request)
    state.require("generate", "/v1/chat/completions", body.model)
    try:
        prompt_ids = state.served.chat_prompt_ids([text_of(m) for m in body.messages])
    except ServeError as exc:
        raise ApiError(400, str(exc), "messages") from None
    return await answer(state, "chat", prompt_ids, body)


async def completions(body: CompletionBody, request: Request):
    state = serve_state(request)
    state.require("generate", "/v1/completions", body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise ApiError(400, "`prompt` must be one non-empty text", "prompt")
    return await answer(state, "completion", state.served.completion_prompt_ids(prompts[0]), body)


async def index(request: Request):
    return HTMLResponse(page(serve_state(request)))


async def health(request: Request):
    state = serve_state(request)
    problem = state.engine.healthy() if state.engine is not None else None
    body = {"status": "error" if problem else "ok", "task": state.served.task, "model": state.served.name}
    body |= {"engine": getattr(state.engine, "name", None), "in_flight": state.in_flight}
    return JSONResponse(body | ({"error": problem} if problem else {}), 503 if problem else 200)


async def metrics(request: Request):
    state = serve_state(request)
    active = state.engine.active() if state.engine is not None else 0
    return PlainTextResponse(state.metrics.render({"in_flight_requests": state.in_flight, "engine_requests": active}))


async def models(request: Request):
    model = {"id": serve_state(request).served.name, "object": "model", "created": 0, "owned_by": "serve.py"}
    return {"object": "list", "data": [model]}


async def api_error(request, exc: ApiError):
    return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), exc.status)


async def bad_request(request, exc: ServeError):
    return JSONResponse(error_body(400, str(exc)), 400)


async def invalid_request(request, exc: RequestValidationError):
    return JSONResponse(error_body(400, validation_message(exc)), 400)


async def http_error(request, exc: StarletteHTTPException):
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code)


ROUTES = [
    ("/", index, "GET"),
    ("/health", health, "GET"),
    ("/metrics", metrics, "GET"),
    ("/v1/models", models, "GET"),
    ("/v1/chat/completions", chat_completions, "POST"),
    ("/v1/completions", completions, "POST"),
    *TASK_ROUTES,
]


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg')}")
    return "; ".join(parts)


def build_app(served: Served, engine, args):
    """The ASGI app for one served model: the page, every route (a route of another task is a 404 that says
    which routes this one has), health and metrics, inside the size / key / metrics guard.
    """
    state = ServerState(served, engine, args)
    app = FastAPI(title=f"serve.py: {served.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    for path, endpoint, method in ROUTES:
        app.add_api_route(path, endpoint, methods=[method])
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ServeError, bad_request)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    return Guard(app, state)
