"""What every route shares: the served model, its engine, the arguments, the metrics and the requests in flight."""

import threading

from zhtrain.serve.errors import ApiError
from zhtrain.serve.model import Served
from zhtrain.serve.monitoring import Metrics


class ServerState:
    """Held by the app (`app.state.serve`); the in-flight count is the limit --max_concurrent_requests sets."""

    def __init__(self, served: Served, engine, args):
        self.served, self.engine, self.args = served, engine, args
        self.metrics, self.in_flight, self.lock = Metrics(), 0, threading.Lock()
        self.model_lock = threading.Lock()  # classifier, CLIP and captioner: one forward at a time

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

    def check_model(self, model: str | None) -> None:
        """A 404 when the request names a model other than the one served (leaving it out is fine)."""
        if model is not None and model != self.served.name:
            raise ApiError(
                404,
                f"model `{model}` is not served here; this server serves `{self.served.name}`",
                "model",
                "model_not_found",
            )
