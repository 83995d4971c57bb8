"""serve.py's errors as OpenAI writes them, `{"error": {"message", "type", "param", "code"}}`, whatever raised them.

400 for bad input and for anything over a limit, 401 without the API key, 404 for a route or model not served
here, 429 when too many requests are in flight, 500 when a generation fails.
"""

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from zhtrain.serve.model import ServeError
from zhtrain.serve.routes import ALL_ROUTES, ROUTES_OF_TASK
from zhtrain.serve.schemas import ErrorDetail, ErrorResponse

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
ERROR_TYPES |= {429: "rate_limit_error", 503: "service_unavailable_error"}


class ApiError(Exception):
    """A request refused with `status`; `param` names the request field at fault, `code` OpenAI's error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    detail = ErrorDetail(message=message, type=ERROR_TYPES.get(status, "server_error"), param=param, code=code)
    return ErrorResponse(error=detail)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code).model_dump(), status)


def validation_message(exc: RequestValidationError) -> str:
    """The first five problems pydantic found, each with the field it found it in: `temperature: Input should...`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg')}")
    return "; ".join(parts)


async def api_error(request, exc: ApiError):
    return error_response(exc.status, exc.message, exc.param, exc.code)


async def bad_request(request, exc: ServeError):
    return error_response(400, str(exc))


async def invalid_request(request, exc: RequestValidationError):
    return error_response(400, validation_message(exc))


async def http_error(request, exc: StarletteHTTPException):
    """Starlette's own errors (404, 405) in OpenAI's shape; a route of another task says which routes are here."""
    task = request.app.state.serve.served.task
    if exc.status_code == 404 and request.url.path in ALL_ROUTES.difference(ROUTES_OF_TASK[task]):
        routes = ", ".join(ROUTES_OF_TASK[task])
        message = f"{request.url.path} needs another kind of model; this server serves a {task} model: {routes}"
        return error_response(404, message)
    return error_response(exc.status_code, str(exc.detail))


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ServeError, bad_request)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
