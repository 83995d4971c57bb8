"""serve.py's HTTP side: the FastAPI app for one served model, assembled from its parts.

    routes.py      the paths and the Task enum       schemas.py     request and response bodies (OpenAI's shapes)
    generation.py  chat / completions (generate)     tasks.py       classify, clip and caption routes
    about.py       the page, the model list          monitoring.py  /health, /metrics
    guard.py       body size, API key, metrics       errors.py      every error in OpenAI's shape
    state.py       what the routes share

Only the router of the task being served is mounted, beside the routes every server has.
"""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from zhtrain.serve import about, generation, monitoring, tasks
from zhtrain.serve.errors import add_error_handlers
from zhtrain.serve.guard import Guard
from zhtrain.serve.model import Served
from zhtrain.serve.routes import Task
from zhtrain.serve.state import ServerState

COMMON_ROUTERS = (about.router, monitoring.router)
TASK_ROUTERS = {
    Task.GENERATE: generation.router,
    Task.CLASSIFY: tasks.classify_router,
    Task.CLIP: tasks.clip_router,
    Task.CAPTION: tasks.caption_router,
}


def build_app(served: Served, engine, args) -> Guard:
    """The ASGI app for one served model: the page, health, metrics, the model list and the task's routes, inside
    the size / key / metrics guard. `.state` is the ServerState the routes share.
    """
    state = ServerState(served, engine, args)
    # an explicit JSONResponse serialises with json.dumps, as before; FastAPI's default would let pydantic write
    # the JSON, which spells some numbers differently (0.00001 for 1e-05)
    app = FastAPI(
        title=f"serve.py: {served.name}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=JSONResponse,
    )
    app.state.serve = state
    for router in (*COMMON_ROUTERS, TASK_ROUTERS[served.task]):
        app.include_router(router)
    add_error_handlers(app)
    return Guard(app, state)
