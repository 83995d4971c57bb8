"""What this server serves: the web page at / (for people) and OpenAI's model list (for clients)."""

import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from zhtrain.serve import routes
from zhtrain.serve.routes import Task
from zhtrain.serve.schemas import ModelCard, ModelList

PAGE = Path(__file__).resolve().parent / "page.html"

router = APIRouter()


def page(state) -> str:
    """page.html with what it needs to know: the box to show (chat, completion or a task's), the model, the key."""
    served = state.served
    box = "chat" if served.can_chat else "completion" if served.task == Task.GENERATE else served.task.value
    config = {"task": box, "model": served.name, "description": served.kind.description}
    config["needs_key"] = bool(state.args.api_key)
    return PAGE.read_text(encoding="utf-8").replace("/*CONFIG*/null", json.dumps(config, ensure_ascii=False))


@router.get(routes.INDEX)
async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(page(request.app.state.serve))


@router.get(routes.MODELS)
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=request.app.state.serve.served.name)])
