"""zhtrain/serve/batching.py: both engines give each request what `generate` gives it alone, stop, sample, cancel, regroup."""

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from serve_models import adapter_folder, chat_folder, greedy_ids
from zhtrain.serve.batching import ContinuousEngine, GenerationRequest, WaveEngine


class Collector:
    """A request's deliveries, and an event set when it finished."""

    def __init__(self):
        self.ids, self.calls, self.error, self.done = [], 0, None, threading.Event()

    def __call__(self, ids, finished, error):
        self.ids += ids
        self.calls += 1
        self.error = error
        if finished:
            self.done.set()


def run(engine, prompts, max_new_tokens=12, stop_ids=(3,), **settings) -> list[Collector]:
    collectors = [Collector() for _ in prompts]
    for prompt, collector in zip(prompts, collectors):
        engine.submit(GenerationRequest(prompt, max_new_tokens, list(stop_ids), collector, **settings))
    for collector in collectors:
        assert collector.done.wait(60), "a request never finished"
    return collectors


@pytest.fixture(scope="module")
def chat_dir(demo_dir, tmp_path_factory):
    return chat_folder(demo_dir, tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def model(chat_dir):
    return AutoModelForCausalLM.from_pretrained(chat_dir).eval()


PROMPTS = [[2, 101, 102, 103], [2, 200, 201, 202, 203, 204, 205, 206], [2, 300]]


@pytest.mark.parametrize("engine_class", [pytest.param(ContinuousEngine, marks=pytest.mark.slow), WaveEngine])
def test_concurrent_requests_get_what_generate_gives_each_alone(model, engine_class):
    engine = (
        ContinuousEngine(model, [3], 0, max_batch_size=4, max_context=64, seed=0)
        if engine_class is ContinuousEngine
        else WaveEngine(model, 0, max_batch_size=4)
    )
    try:
        got = run(engine, PROMPTS)
        assert [c.ids for c in got] == [greedy_ids(model, p, 12, [3]) for p in PROMPTS]
        assert all(c.calls > 1 for c in got)  # streamed: ids came in several deliveries
        # a per-request stop id ends the answer at its first occurrence, stop id included
        reference = greedy_ids(model, PROMPTS[1], 12, [3])
        stop = reference[4]
        (stopped,) = run(engine, [PROMPTS[1]], stop_ids=[stop])
        assert stopped.ids == reference[: reference.index(stop) + 1]
        # a cancelled request gets nothing more and leaves the engine
        long = Collector()
        request = GenerationRequest(PROMPTS[0], 400, [], long)
        engine.submit(request)
        while len(long.ids) < 3:
            time.sleep(0.01)
        engine.cancel(request.request_id)
        time.sleep(0.3)
        seen = len(long.ids)
        time.sleep(0.3)
        assert len(long.ids) == seen < 400 and not long.done.is_set() and engine.active() == 0
    finally:
        engine.close()


def test_waves_regroup_when_requests_arrive_mid_wave(model):
    engine = WaveEngine(model, 0, max_batch_size=4, regroup_steps=4)
    try:
        first = Collector()
        engine.submit(GenerationRequest(PROMPTS[1], 40, [], first))
        while len(first.ids) < 6:
            time.sleep(0.005)
        late = run(engine, [PROMPTS[0], PROMPTS[2]], max_new_tokens=10, stop_ids=[])
        assert first.done.wait(60)
        assert engine.regroups >= 1  # the late requests joined before the first one was done
        assert first.ids == greedy_ids(model, PROMPTS[1], 40, [])  # carried over into the next wave unchanged
        assert [c.ids for c in late] == [greedy_ids(model, p, 10, []) for p in (PROMPTS[0], PROMPTS[2])]
    finally:
        engine.close()


def test_waves_sample_reproducibly_per_request_seed(model):
    engine = WaveEngine(model, 0, max_batch_size=4)
    try:
        settings = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16, "stop_ids": []}
        alone = run(engine, [PROMPTS[0]], seed=7, **settings)[0].ids
        batched = run(engine, [PROMPTS[0], PROMPTS[0], PROMPTS[1]], seed=7, **settings)
        other_seed = run(engine, [PROMPTS[0]], seed=8, **settings)[0].ids
        assert batched[0].ids == batched[1].ids == alone != other_seed
        assert alone != greedy_ids(model, PROMPTS[0], 16, [])
    finally:
        engine.close()


@pytest.mark.slow
def test_continuous_engine_refuses_a_seed_it_cannot_honour(model):
    engine = ContinuousEngine(model, [3], 0, max_batch_size=2, max_context=64, seed=0)
    try:
        with pytest.raises(ValueError, match="--batching waves"):
            engine.submit(GenerationRequest(PROMPTS[0], 4, [3], Collector(), temperature=0.7, seed=1))
    finally:
        engine.close()


@pytest.mark.parametrize("kind", [pytest.param("lora", marks=pytest.mark.slow), "ptuning"])
def test_adapters_served_unmerged_match_peft_generate(chat_dir, tmp_path, kind):
    from peft import PeftModel

    folder = adapter_folder(chat_dir, tmp_path / kind, kind)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_dir), folder).eval()
    if kind == "lora":  # LoRA runs in transformers' continuous batching: its layers are in the base model
        engine = ContinuousEngine(peft_model.get_base_model(), [3], 0, max_batch_size=4, max_context=64, seed=0)
    else:  # a prefix lives in the KV cache: our waves, through peft's generate
        engine = WaveEngine(peft_model, 0, max_batch_size=4)
    try:
        got = [c.ids for c in run(engine, PROMPTS)]
    finally:
        engine.close()
    assert got == [greedy_ids(peft_model, p, 12, [3]) for p in PROMPTS]
    with peft_model.disable_adapter():
        assert got != [greedy_ids(peft_model, p, 12, [3]) for p in PROMPTS]  # the adapter changed the answers


def test_waves_serve_an_encoder_decoder_model(demo_dir):
    path = demo_dir / "models" / "t5-tiny-zh"
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer(text)["input_ids"] for text in ("类型#裙", "类型#衬衫*颜色#白色*材质#棉")]
    engine = WaveEngine(model, tokenizer.pad_token_id, max_batch_size=4)
    try:
        got = [c.ids for c in run(engine, prompts, stop_ids=[tokenizer.sep_token_id])]
    finally:
        engine.close()
    assert got == [greedy_ids(model, p, 12, [tokenizer.sep_token_id]) for p in prompts]
    assert torch.is_grad_enabled()  # the engine's no_grad stayed in its thread
