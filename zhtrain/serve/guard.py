"""The guard around the app: the body-size limit, the API key, and the metrics of every request.

It is ASGI middleware rather than a FastAPI dependency so that it also covers 404s, 405s and bodies that are
not JSON, and refuses an oversized or unauthorised body before the app reads or parses it.
"""

import secrets
import time

from zhtrain.serve.errors import ApiError, error_response
from zhtrain.serve.routes import ALL_ROUTES, is_guarded


class Guard:
    """ASGI middleware over the app; `state` is the app's ServerState."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope["path"], [500]
        route = path if path in ALL_ROUTES else "other"

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            problem = self.refusal(scope)
            body = await self.read_body(receive) if problem is None else b""
            if problem is None and body is None:
                problem = self.too_large()
            if problem is not None:
                response = error_response(problem.status, problem.message, code=problem.code)
                return await response(scope, receive, send_status)
            await self.app(scope, self.replay(body, receive), send_status)
        finally:
            self.state.metrics.observe(route, status[0], time.perf_counter() - start)

    def too_large(self) -> ApiError:
        return ApiError(400, f"the request body is over --max_request_bytes ({self.state.args.max_request_bytes})")

    def refusal(self, scope) -> ApiError | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.state.args.max_request_bytes:
            return self.too_large()
        key = self.state.args.api_key
        if key and is_guarded(scope["path"]):
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
