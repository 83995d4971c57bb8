"""The one place that names serve.py's routes and its tasks: the paths, and which task serves which of them.

The routers use these constants; the app mounts the routes of the task being served and answers a route of
another task with a 404 that lists this server's routes (`ROUTES_OF_TASK`).
"""

from enum import Enum


class Task(str, Enum):
    """What a served folder is for; its value is the word the health check and the page report."""

    GENERATE = "generate"  # causal-LM and seq2seq models: chat and completions
    CLASSIFY = "classify"
    CLIP = "clip"
    CAPTION = "caption"

    def __str__(self) -> str:  # "classify" in messages, as the bare strings were
        return self.value


INDEX = "/"
HEALTH = "/health"
METRICS = "/metrics"
MODELS = "/v1/models"
CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
CLASSIFY = "/v1/classify"
EMBEDDINGS = "/v1/embeddings"
SIMILARITY = "/v1/similarity"
CAPTION = "/v1/caption"

COMMON_ROUTES = (INDEX, HEALTH, METRICS, MODELS)  # every server has them
ROUTES_OF_TASK = {
    Task.GENERATE: (CHAT_COMPLETIONS, COMPLETIONS),
    Task.CLASSIFY: (CLASSIFY,),
    Task.CLIP: (EMBEDDINGS, SIMILARITY),
    Task.CAPTION: (CAPTION,),
}
ALL_ROUTES = frozenset(COMMON_ROUTES).union(*ROUTES_OF_TASK.values())


def is_guarded(path: str) -> bool:
    """Whether --api_key guards `path`: the API and the metrics; the page and the health check stay open."""
    return path.startswith("/v1/") or path == METRICS
