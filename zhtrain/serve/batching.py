"""Generation requests batched for serving: transformers' continuous batching, or our own rolling waves.

serve.py hands every chat / completion request to one engine, which generates for many requests at once and
calls each request's `deliver(new_ids, finished, error)` from its worker thread as tokens appear.

- `ContinuousEngine` is transformers' continuous-batching manager (`init_continuous_batching`: paged KV cache,
  requests join and leave the running batch at every step). It serves decoder-only models, full or with LoRA
  adapters served unmerged (peft injects the LoRA layers into the model's own modules, which the manager runs):
  checked on CPU, greedy ids identical to `PeftModel.generate`, per-request stop ids, streaming, cancellation.
  serve.py uses it on GPUs, what it is built for (CUDA graphs, flash / paged attention).
- `WaveEngine` is ours, for what the manager cannot do: P-Tuning prefixes (peft puts them in the KV cache, which
  the paged cache has no place for), encoder-decoder models (the manager is decoder-only), a per-request `seed`
  (the manager samples every request from one generator), and CPUs: on CPU the per-request temperature / top-p
  processors the manager needs to mix greedy and sampled requests cost it most of its speed, while for greedy
  requests alone it is the faster of the two (benchmarks/bench_serve.py; the numbers are in BENCHMARKS.md).
"""

import logging
import math
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

# The manager's sampling switch is one setting for all requests: it samples, and a greedy request gets a
# temperature so low that the softmax is one-hot on the argmax (checked: the same ids as greedy `generate`).
GREEDY_TEMPERATURE = 1e-5
SEED_REFUSAL = (
    "`seed` is not supported by continuous batching (one generator samples every request); start the server with "
    "--batching waves to sample reproducibly per request"
)


@dataclass
class GenerationRequest:
    """One generation: the prompt ids, how to sample, when to stop, and where the new ids go.

    `deliver(new_ids, finished, error)` is called from the engine's thread: new ids in order, `finished` once
    (after a stop id or `max_new_tokens`), or an error message. A cancelled request gets no further call.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    stop_ids: list[int]
    deliver: Callable[[list[int], bool, str | None], None]
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 1.0
    seed: int | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class ContinuousEngine:
    """transformers' continuous-batching manager behind the `submit` / `cancel` interface."""

    name, per_request_seed = "continuous", False

    def __init__(self, model, stop_ids: list[int], pad_id: int, max_batch_size: int, max_context: int, seed: int):
        # transformers here and in _run_wave, not at the top: importing it imports PIL, and serve.py stays free of
        # PIL (and quick to start with --help) until a model is loaded
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # temperature and top_p placeholders: the manager builds per-request processors only for those the
        # generation config uses (temperature != 1, top_p < 1); every request then passes its own values
        config = GenerationConfig(
            do_sample=True, temperature=0.5, top_p=0.9, top_k=0, eos_token_id=list(stop_ids), pad_token_id=pad_id
        )
        page_size = 256
        # the cache is sized for the limits, not by memory share (on CPU the default takes 60% of the RAM)
        blocks = max_batch_size * math.ceil(max_context / page_size) + 1
        cb_config = ContinuousBatchingConfig(
            per_request_processors=True,
            page_size=page_size,
            num_blocks=blocks,
            max_batch_tokens=512,
            max_requests_per_batch=max_batch_size,
            seed=seed,
        )
        self.manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
        self.requests: dict[str, GenerationRequest] = {}
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        self.manager.start()
        self.running = True
        self.dispatcher = threading.Thread(target=self._dispatch, name="cb-dispatch", daemon=True)
        self.dispatcher.start()

    def submit(self, request: GenerationRequest) -> None:
        if request.seed is not None and request.temperature > 0:
            raise ValueError(SEED_REFUSAL)
        with self.lock:
            self.requests[request.request_id], self.sent[request.request_id] = request, 0
        added = self.manager.add_request(
            request.prompt_ids,
            request_id=request.request_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,
            eos_token_id=list(request.stop_ids),
            temperature=float(request.temperature or GREEDY_TEMPERATURE),
            top_p=float(request.top_p),
        )
        if added is None:
            self._forget(request.request_id)
            raise RuntimeError("the continuous-batching manager is not accepting requests (it stopped)")

    def cancel(self, request_id: str) -> None:
        if self._forget(request_id):
            self.manager.cancel_request(request_id)

    def _forget(self, request_id: str) -> GenerationRequest | None:
        with self.lock:
            self.sent.pop(request_id, None)
            return self.requests.pop(request_id, None)

    def _dispatch(self) -> None:
        """Route the manager's outputs (each one the request's ids so far) to their requests as new ids."""
        while self.running:
            output = self.manager.get_result(timeout=0.1)
            if output is None:
                continue
            with self.lock:
                request = self.requests.get(output.request_id)
                sent = self.sent.get(output.request_id, 0)
                self.sent[output.request_id] = len(output.generated_tokens)
            if request is None:  # cancelled
                continue
            finished = output.is_finished()
            if finished:
                self._forget(output.request_id)
            request.deliver(list(output.generated_tokens[sent:]), finished, output.error)

    def healthy(self) -> str | None:
        """None when the worker is alive, else why not."""
        error = self.manager.background_thread_status.fatal_error
        return None if error is None and self.manager.is_running() else f"the generation loop stopped: {error}"

    def active(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.running = False
        self.manager.stop(block=True, timeout=5)
        self.dispatcher.join(timeout=2)


@dataclass
class Row:
    """A request inside the wave engine: the ids it has so far and its own random generator."""

    request: GenerationRequest
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    done: bool = False


class RowSampler:
    """Per-row sampling in a greedy `generate`: a sampled row's scores become one-hot on the token it draws.

    Each row draws with its own temperature, top-p and generator (seeded when the request has a seed), so a
    seeded request gives the same answer whatever it is batched with; greedy rows keep their scores. A logits
    processor by its call signature: `generate` calls any such object, so no transformers class is subclassed.
    """

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids, scores):
        for i, row in enumerate(self.rows):
            if row.request.temperature <= 0 or row.done:
                continue
            probs = torch.softmax(scores[i].float() / row.request.temperature, dim=-1)
            if row.request.top_p < 1:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= row.request.top_p  # keeps the first token
                probs[order[outside]] = 0
            token = torch.multinomial(probs, 1, generator=row.generator)
            scores[i] = torch.full_like(scores[i], float("-inf"))
            scores[i, token] = 0
        return scores


class RowBookkeeper:
    """Called after every step of a wave: hands each row its new token, and says which rows are done.

    A row is done at a stop id, at its `max_new_tokens`, or when cancelled. The whole wave ends early (every row
    reported done, the unfinished ones carried over) when requests wait and `engine.should_regroup` says so.
    A stopping criterion by its call signature, as RowSampler is a logits processor.
    """

    def __init__(self, rows: list[Row], engine: "WaveEngine"):
        self.rows, self.engine, self.steps, self.regrouped = rows, engine, 0, False

    def __call__(self, input_ids, scores, **kwargs):
        self.steps += 1
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last):
            if row.done:
                continue
            if self.engine.is_cancelled(row.request.request_id):
                row.done = True
                continue
            row.generated.append(token)
            row.done = token in row.request.stop_ids or len(row.generated) >= row.request.max_new_tokens
            row.request.deliver([token], row.done, None)
        if not all(row.done for row in self.rows) and self.engine.should_regroup(self.rows, self.steps):
            self.regrouped = True
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


class WaveEngine:
    """Our scheduler: batched `generate` calls ("waves") that new requests join every few steps.

    A wave left-pads the prompts of up to `max_batch_size` rows and runs one greedy `generate` with `RowSampler`
    and `RowBookkeeper`, so every row streams, samples and stops on its own. When requests are waiting and the
    wave has a free row, it ends after `regroup_steps` steps; its unfinished rows go on in the next wave with
    their prompt plus what they generated (one re-read of those tokens, cheap next to decoding them). For
    encoder-decoder models a wave always runs to its end (the continuation would need padded decoder inputs).
    """

    name = "waves"

    def __init__(self, model, pad_id: int, max_batch_size: int, regroup_steps: int = 8):
        self.model, self.pad_id = model, pad_id
        self.max_batch_size, self.regroup_steps = max_batch_size, regroup_steps
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.waiting: deque[Row] = deque()
        self.carried: list[Row] = []
        self.cancelled: set[str] = set()
        self.live: set[str] = set()
        self.condition = threading.Condition()
        self.running, self.error = True, None
        self.waves, self.regroups = 0, 0  # counts, for /metrics and the tests
        self.device = next(model.parameters()).device
        self.worker = threading.Thread(target=self._work, name="wave-engine", daemon=True)
        self.worker.start()

    def submit(self, request: GenerationRequest) -> None:
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(63))
        with self.condition:
            self.waiting.append(Row(request, generator=generator))
            self.live.add(request.request_id)
            self.condition.notify()

    def cancel(self, request_id: str) -> None:
        with self.condition:
            if request_id in self.live:
                self.cancelled.add(request_id)

    def is_cancelled(self, request_id: str) -> bool:
        return request_id in self.cancelled

    def should_regroup(self, rows: list[Row], steps: int) -> bool:
        """End the wave now: requests wait, a row is free for one, and the wave has run `regroup_steps` steps."""
        if self.encoder_decoder or not self.waiting or steps < self.regroup_steps:
            return False
        return sum(not row.done for row in rows) < self.max_batch_size

    def healthy(self) -> str | None:
        return None if self.worker.is_alive() else f"the generation worker stopped: {self.error}"

    def active(self) -> int:
        with self.condition:
            return len(self.live - self.cancelled)

    def close(self) -> None:
        with self.condition:
            self.running = False
            self.condition.notify()
        self.worker.join(timeout=5)

    def _next_wave(self) -> list[Row] | None:
        with self.condition:
            while self.running and not self.waiting and not self.carried:
                self.condition.wait()
            if not self.running:
                return None
            rows, self.carried = self.carried, []
            while self.waiting and len(rows) < self.max_batch_size:
                rows.append(self.waiting.popleft())
            kept = [row for row in rows if row.request.request_id not in self.cancelled]
            self._release(row for row in rows if row not in kept)
            return kept

    def _release(self, rows) -> None:
        for row in rows:
            self.live.discard(row.request.request_id)
            self.cancelled.discard(row.request.request_id)

    def _work(self) -> None:
        while True:
            rows = self._next_wave()
            if rows is None:
                return
            if not rows:
                continue
            try:
                bookkeeper = self._run_wave(rows)
            except Exception as exc:  # one bad wave fails its requests, never the server
                logger.exception("generation failed")
                for row in rows:
                    row.request.deliver([], True, f"generation failed: {exc}")
                    row.done = True
                bookkeeper = None
            with self.condition:
                unfinished = [r for r in rows if not r.done and r.request.request_id not in self.cancelled]
                self.waves += 1
                if bookkeeper is not None and bookkeeper.regrouped:
                    self.carried, self.regroups = unfinished, self.regroups + 1
                else:  # generate stopped at its own length limit with rows left (it cannot): fail them
                    for row in unfinished:
                        row.request.deliver([], True, "generation ended early")
                    unfinished = []
                self._release(r for r in rows if r not in unfinished)

    @torch.no_grad()
    def _run_wave(self, rows: list[Row]) -> RowBookkeeper:
        from transformers import GenerationConfig

        sequences = [row.request.prompt_ids + ([] if self.encoder_decoder else row.generated) for row in rows]
        width = max(map(len, sequences))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(sequences):  # left padding: every row's next token is at the end
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        bookkeeper = RowBookkeeper(rows, self)
        config = GenerationConfig(
            max_new_tokens=max(row.request.max_new_tokens - len(row.generated) for row in rows),
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=None,
            pad_token_id=self.pad_id,
        )
        if self.encoder_decoder:
            config.decoder_start_token_id = self.model.config.decoder_start_token_id
        self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=config,
            logits_processor=[RowSampler(rows)],
            stopping_criteria=[bookkeeper],
        )
        return bookkeeper
