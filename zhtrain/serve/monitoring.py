"""Health and metrics: `/health` for load balancers (no key needed), `/metrics` in Prometheus' text format."""

import threading
from collections import Counter, defaultdict

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from zhtrain.serve import routes
from zhtrain.serve.schemas import Health

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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


router = APIRouter()


@router.get(routes.HEALTH)
async def health(request: Request, response: Response) -> Health:
    """ok, or error (a 503) with the engine's problem: the task, model and engine served, the requests in flight."""
    state = request.app.state.serve
    problem = state.engine.healthy() if state.engine is not None else None
    response.status_code = 503 if problem else 200
    return Health(
        status="error" if problem else "ok",
        task=state.served.task,
        model=state.served.name,
        engine=getattr(state.engine, "name", None),
        in_flight=state.in_flight,
        error=problem,
    )


@router.get(routes.METRICS)
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state.serve
    active = state.engine.active() if state.engine is not None else 0
    return PlainTextResponse(state.metrics.render({"in_flight_requests": state.in_flight, "engine_requests": active}))
