"""serve.py against live servers on free loopback ports: the openai client, every task route, auth, limits,
bad input, a disconnect mid-stream, the terminal chat; its layers: light imports, the routes mounted per task,
response bodies the openai client reads; slow: the page in a real browser, a load test, the script as a
subprocess, and a merged LoRA served like its adapter."""

import base64
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
from PIL import Image

import serve
from serve_models import (
    adapter_folder,
    captioner_folder,
    chat_folder,
    classifier_folder,
    greedy_ids,
    live_server,
)
from zhtrain.chat.format import ChatFormat
from zhtrain.errors import run_main
from zhtrain.launch import free_port
from zhtrain.serve import routes, schemas
from zhtrain.serve.api import build_app
from zhtrain.serve.errors import error_body
from zhtrain.serve.model import FolderKind, ServeError, describe_folder
from zhtrain.serve.routes import Task

ROOT = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "类型#裙*颜色#红色*风格#复古"}]


@pytest.fixture(scope="module")
def chat_dir(demo_dir, tmp_path_factory):
    return chat_folder(demo_dir, tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def chat_server(chat_dir):
    """transformers' continuous batching (serve.py's choice on a GPU), here on CPU."""
    with live_server(chat_dir, "--batching", "continuous") as server:
        yield server


@pytest.fixture(scope="module")
def guarded_server(chat_dir):
    """Small limits, an API key, our waves (per-request seeds)."""
    flags = ["--api_key", "sekret", "--max_concurrent_requests", "1", "--max_tokens", "64"]
    flags += ["--max_prompt_tokens", "32", "--max_request_bytes", "4096", "--batching", "waves"]
    with live_server(chat_dir, *flags) as server:
        yield server


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}  # OpenAI's error shape
    return body["error"]["message"]


def test_openai_client_chat_streaming_and_completions(chat_server):
    url, state = chat_server
    served = state.served
    prompt = served.chat_prompt_ids(QUESTION)
    # the prompt is the one training built for this question (zhtrain.chat.format, the saved template)
    trained = ChatFormat(served.tokenizer).encode([*QUESTION, {"role": "assistant", "content": "答"}], False, 512, 64)
    assert prompt == trained.prompt_ids
    reference = greedy_ids(served.model, prompt, 20, served.stop_ids)
    api = client(url)
    assert [m.id for m in api.models.list().data] == [served.name]
    done = api.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=20)
    assert done.choices[0].message.content == served.decode(reference) != ""
    assert done.usage.prompt_tokens == len(prompt) and done.usage.completion_tokens == len(reference)
    assert done.choices[0].finish_reason == ("stop" if reference[-1] in served.stop_ids else "length")
    chunks = list(
        api.chat.completions.create(
            model=served.name, messages=QUESTION, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == done.choices[0].message.content and len(pieces) > 1  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(reference)
    completion = api.completions.create(model=served.name, prompt="这款", max_tokens=8)
    expected = greedy_ids(served.model, served.completion_prompt_ids("这款"), 8, served.stop_ids)
    assert completion.choices[0].text == served.decode(expected)
    streamed = api.completions.create(model=served.name, prompt="这款", max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_stop_strings_and_max_tokens(chat_server):
    url, state = chat_server
    served, api = state.served, client(url)
    full = api.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=12).choices[0]
    stop = full.message.content[4:6]
    cut = api.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=12, stop=[stop]).choices[0]
    assert cut.message.content == full.message.content[: full.message.content.index(stop)]
    assert cut.finish_reason == "stop"
    short = api.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=2).choices[0]
    assert short.finish_reason == "length" and full.message.content.startswith(short.message.content)


def test_bad_requests_are_4xx_in_openai_shape(chat_server):
    url, state = chat_server
    name = state.served.name
    post = lambda body, path="/v1/chat/completions": httpx.post(url + path, json=body)  # noqa: E731
    cases = [
        ({"model": name, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
        ({"model": name, "messages": QUESTION, "temperature": "hot"}, 400, "temperature"),
        ({"model": name, "messages": QUESTION, "stream": "yes"}, 400, "stream"),
        ({"model": name, "messages": QUESTION, "max_tokens": 0}, 400, "max_tokens"),
        ({"model": name, "messages": []}, 400, "messages"),
        ({"model": name, "messages": [{"role": "assistant", "content": "x"}]}, 400, "wrong role order"),
        ({"model": name, "messages": QUESTION, "n": 2}, 400, "n other than 1"),
        ({"model": name, "messages": QUESTION, "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": "gpt-4", "messages": QUESTION}, 404, "`gpt-4` is not served here"),
        ({"model": name, "messages": QUESTION, "max_tokens": 600}, 400, "over this server's limit"),
        ({"model": name, "messages": QUESTION, "seed": 1, "temperature": 1.0}, 400, "--batching waves"),
        (
            {"model": name, "messages": QUESTION, "seed": 1, "temperature": 1.0, "stream": True},
            400,
            "--batching waves",
        ),
    ]
    for body, status, message in cases:
        response = post(body)
        assert response.status_code == status and message in error_of(response), (body, response.text)
    for path, status, message in [("/v1/classify", 404, "serves a generate model"), ("/v2/nothing", 404, "Not Found")]:
        response = post({"input": "x"}, path)
        assert response.status_code == status and message in error_of(response)
    raw = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and "JSON" in error_of(raw)
    assert httpx.get(url + "/v1/chat/completions").status_code == 405
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_auth_and_limits(guarded_server):
    url, state = guarded_server
    name, key = state.served.name, {"Authorization": "Bearer sekret"}
    assert httpx.get(url + "/v1/models").status_code == 401
    assert "API key" in error_of(httpx.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}))
    assert httpx.get(url + "/v1/models", headers=key).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # for load balancers: no key
    assert '"needs_key": true' in httpx.get(url + "/").text  # the page asks for the key
    with pytest.raises(openai.AuthenticationError):
        client(url).chat.completions.create(model=name, messages=QUESTION)
    long = [{"role": "user", "content": "长" * 40}]
    response = httpx.post(url + "/v1/chat/completions", json={"model": name, "messages": long}, headers=key)
    assert response.status_code == 400 and "over the limit of 32" in error_of(response)
    big = {"model": name, "messages": QUESTION, "padding": "x" * 5000}
    response = httpx.post(url + "/v1/chat/completions", json=big, headers=key)
    assert response.status_code == 400 and "--max_request_bytes" in error_of(response)
    # one request in flight at most (--max_concurrent_requests 1): with the slot taken, the next one is a 429
    state.take_slot()
    try:
        second = httpx.post(url + "/v1/chat/completions", json={"model": name, "messages": QUESTION}, headers=key)
        assert second.status_code == 429 and "retry" in error_of(second)
    finally:
        state.free_slot()
    # with our waves, a seed samples reproducibly
    api = client(url, "sekret")
    sampled = [
        api.chat.completions.create(model=name, messages=QUESTION, max_tokens=8, temperature=1.0, seed=3)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def wait_for(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def metric(url: str, name: str, headers=None) -> float:
    text = httpx.get(url + "/metrics", headers=headers).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(chat_server):
    url, state = chat_server
    cancelled = metric(url, "serve_cancelled_requests_total")
    body = {"model": state.served.name, "messages": QUESTION, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as stream:
        lines = stream.iter_lines()
        for _ in range(6):
            next(lines)
        assert metric(url, "serve_in_flight_requests") == 1
    assert wait_for(lambda: metric(url, "serve_in_flight_requests") == 0 and metric(url, "serve_engine_requests") == 0)
    assert metric(url, "serve_cancelled_requests_total") == cancelled + 1
    assert metric(url, "serve_generated_tokens_total") > 0
    assert 'serve_requests_total{route="/v1/chat/completions",status="200"}' in httpx.get(url + "/metrics").text
    assert httpx.get(url + "/health").json()["status"] == "ok"


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classifier(demo_dir, tmp_path):
    folder = classifier_folder(demo_dir, tmp_path / "classifier")
    with live_server(folder) as (url, state):
        served = state.served
        texts = ["房间很干净", "太失望了"]
        response = httpx.post(url + "/v1/classify", json={"input": texts}).json()
        with torch.no_grad():
            probs = served.model(**served.tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
        for result, row in zip(response["data"], probs.tolist()):
            assert result["scores"] == pytest.approx({"负面": row[0], "正面": row[1]}, abs=1e-5)
            assert result["label"] == ("正面" if row[1] > row[0] else "负面")
        too_many = httpx.post(url + "/v1/classify", json={"input": ["x"] * 65})
        assert too_many.status_code == 400 and "--max_inputs" in error_of(too_many)
        assert httpx.post(url + "/v1/classify", json={"input": [""]}).status_code == 400
        assert httpx.post(url + "/v1/chat/completions", json={"messages": QUESTION}).status_code == 404
        assert '"task": "classify"' in httpx.get(url + "/").text


def test_clip_embeddings_and_similarity(demo_dir):
    with live_server(demo_dir / "models" / "chinese-clip-tiny") as (url, state):
        model, processor = state.served.model, state.served.processor
        image = base64.b64encode(png("red")).decode()
        texts = ["红色", "蓝色的圆形"]
        data = httpx.post(url + "/v1/embeddings", json={"input": [*texts, {"image": image}]}).json()["data"]
        with torch.no_grad():
            text = model.get_text_features(
                **processor.tokenizer(texts, padding=True, return_tensors="pt")
            ).pooler_output
            pixels = processor(images=[Image.open(io.BytesIO(png("red")))], return_tensors="pt")["pixel_values"]
            vision = model.get_image_features(pixel_values=pixels).pooler_output
        expected = torch.cat([text / text.norm(dim=-1, keepdim=True), vision / vision.norm(dim=-1, keepdim=True)])
        assert torch.allclose(torch.tensor([d["embedding"] for d in data]), expected, atol=1e-5)
        ranked = httpx.post(url + "/v1/similarity", json={"image": "data:image/png;base64," + image, "texts": texts})
        cosines = [d["cosine"] for d in ranked.json()["data"]]
        assert cosines == sorted(cosines, reverse=True) and len(cosines) == 2
        assert sum(d["probability"] for d in ranked.json()["data"]) == pytest.approx(1, abs=1e-4)
        for bad, message in [("https://example.com/a.png", "not fetched"), ("@@@", "base64"), ("aGVsbG8=", "decoded")]:
            response = httpx.post(url + "/v1/similarity", json={"image": bad, "texts": texts})
            assert response.status_code == 400 and message in error_of(response)


def test_captioner_upload_and_base64(demo_dir, tmp_path):
    folder = captioner_folder(demo_dir, tmp_path / "captioner")
    with live_server(folder) as (url, state):
        served = state.served
        pixels = served.processor(Image.open(io.BytesIO(png("blue"))), return_tensors="pt").pixel_values
        with torch.no_grad():
            expected = served.decode(served.model.generate(pixels)[0].tolist())
        uploaded = httpx.post(url + "/v1/caption", files={"file": ("blue.png", png("blue"), "image/png")}).json()
        as_base64 = httpx.post(url + "/v1/caption", json={"image": base64.b64encode(png("blue")).decode()}).json()
        assert uploaded["caption"] == as_base64["caption"] == expected
        broken = httpx.post(url + "/v1/caption", files={"file": ("x.png", b"not an image", "image/png")})
        assert broken.status_code == 400 and "cannot be decoded" in error_of(broken)
        assert httpx.post(url + "/v1/caption", json={"picture": "x"}).status_code == 400


def test_folders_it_cannot_serve_are_refused_with_what_they_hold(demo_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ServeError, match=r"holds no model.*it holds: notes.txt"):
        describe_folder(empty)
    with pytest.raises(ServeError, match=r"BertForMaskedLM \(model_type bert\), which serve.py cannot serve"):
        describe_folder(demo_dir / "models" / "bert-tiny-zh")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ServeError, match="nothing is unpickled; re-save the pytorch_model.bin"):
        describe_folder(pickled)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "chatglm", "auto_map": {"AutoModel": "x.Y"}}')
    with pytest.raises(ServeError, match="trust_remote_code is off.*convert_chatglm"):
        describe_folder(remote)
    with pytest.raises(SystemExit) as exit_info:  # the script's way out: the message, no traceback
        run_main(serve.main, [str(empty)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 1 and "error: " in error and "holds" in error and "Traceback" not in error
    with pytest.raises(SystemExit) as exit_info:
        run_main(serve.main, [str(empty), "--max_tokens", "0"])
    assert exit_info.value.code == 2 and "--max_tokens must be at least 1, got 0" in capsys.readouterr().err


def test_adapter_folder_names_its_base(chat_dir, tmp_path):
    folder = adapter_folder(chat_dir, tmp_path / "lora", "lora")
    kind = describe_folder(folder)
    assert (kind.task, kind.model_path, kind.adapter_type) == ("generate", str(chat_dir), "LORA")
    assert describe_folder(folder, base_model="/elsewhere/base").model_path == "/elsewhere/base"


@pytest.mark.slow
def test_adapters_unmerged_and_a_seq2seq_model_over_http(chat_dir, demo_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    t5 = tmp_path / "t5"
    AutoModelForSeq2SeqLM.from_pretrained(demo_dir / "models" / "t5-tiny-zh").save_pretrained(t5)
    AutoTokenizer.from_pretrained(demo_dir / "models" / "t5-tiny-zh").save_pretrained(t5)
    folders = {kind: adapter_folder(chat_dir, tmp_path / kind, kind) for kind in ("lora", "ptuning")} | {"t5": t5}
    for kind, folder in folders.items():
        with live_server(folder) as (url, state):
            served = state.served
            prompt = served.chat_prompt_ids(QUESTION)
            if kind == "t5":
                model = AutoModelForSeq2SeqLM.from_pretrained(t5).eval()
            else:
                model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_dir), folder).eval()
            expected = served.decode(greedy_ids(model, prompt, 12, served.stop_ids))
            got = client(url).chat.completions.create(model=folder.name, messages=QUESTION, max_tokens=12)
            assert got.choices[0].message.content == expected, kind
            assert httpx.get(url + "/health").json()["engine"] == "waves"  # serve.py's choice on CPU
    with pytest.raises(ServeError, match="--batching continuous cannot serve P-Tuning adapters"):
        serve.load(serve.parse_args([str(folders["ptuning"]), "--device", "cpu", "--batching", "continuous"]))


def test_a_causal_lm_without_chat_template_serves_completions(demo_dir):
    """What run_clm.py saves: no chat template, so completions only, and the page is a completion box."""
    with live_server(demo_dir / "models" / "llama-tiny-zh", "--batching", "waves") as (url, state):
        served = state.served
        response = httpx.post(url + "/v1/chat/completions", json={"messages": QUESTION})
        assert response.status_code == 400 and "--template NAME" in error_of(response)
        text = client(url).completions.create(model=served.name, prompt="今天", max_tokens=5).choices[0].text
        prompt = served.completion_prompt_ids("今天")
        assert prompt[0] == served.tokenizer.bos_token_id  # a Llama tokenizer: bos first, as run_clm packs
        assert text == served.decode(greedy_ids(served.model, prompt, 5, served.stop_ids))
        assert '"task": "completion"' in httpx.get(url + "/").text


def test_terminal_chat_keeps_history_and_clears_it(chat_dir):
    args = serve.parse_args([str(chat_dir), "--device", "cpu", "--max_tokens", "6", "--batching", "waves"])
    served, engine = serve.load(args)
    written = []
    try:
        history = serve.terminal_chat(
            served, engine, args, ["你好", "再说一次", "clear", "最后", "exit", "不读"], written.append
        )
    finally:
        engine.close()
    assert [m["content"] for m in history if m["role"] == "user"] == ["最后"]
    assert "(history cleared)\n" in written and written.count("> ") == 3
    first = written.index("> ")
    answer = "".join(written[first + 1 : written.index("\n", first)])
    expected = greedy_ids(
        served.model, served.chat_prompt_ids([{"role": "user", "content": "你好"}]), 6, served.stop_ids
    )
    assert answer == served.decode(expected)
    assert len(written[first + 1 : written.index("\n", first)]) > 1  # streamed


def test_make_serve_serves_the_demo_chat_model():
    printed = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "serve.py outputs/seq2seq_demo" in printed


# ---- the layers: imports, routes, response shapes -------------------------------------------------------------

HEAVY = ("sklearn", "datasets", "PIL")


@pytest.mark.parametrize("module", ["serve", "zhtrain.serve.model", "zhtrain.data.images"])
def test_importing_the_server_loads_no_sklearn_datasets_or_pil(module):
    """serve.py starts without them (a second or more each); the training data module shows the check can fail."""
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == (["datasets", "PIL"] if module == "zhtrain.data.images" else [])


@pytest.mark.parametrize("task", list(Task))
def test_the_app_mounts_the_common_routes_and_only_its_tasks(task):
    """A PUT (no route takes one) is a 405 on a mounted route, a 404 on a route left out."""
    from starlette.testclient import TestClient

    app = build_app(SimpleNamespace(name="m", task=task), None, serve.parse_args(["folder"]))
    with TestClient(app) as http:
        mounted = {path for path in routes.ALL_ROUTES if http.put(path).status_code == 405}
        assert mounted == {*routes.COMMON_ROUTES, *routes.ROUTES_OF_TASK[task]}
        other = next(path for path in routes.ALL_ROUTES if path not in mounted)
        assert f"this server serves a {task} model: {', '.join(routes.ROUTES_OF_TASK[task])}" in error_of(
            http.put(other)
        )


def test_a_task_is_named_by_its_word():
    assert str(Task.CLIP) == f"{Task.CLIP}" == "clip" and Task("caption") is Task.CAPTION
    assert json.dumps({"task": Task.CLASSIFY}) == '{"task": "classify"}'
    with pytest.raises(ValueError, match="'chat' is not a valid Task"):
        FolderKind("chat", "model")


def test_responses_are_what_the_openai_client_reads():
    from openai.types import Completion as OpenAICompletion
    from openai.types import CreateEmbeddingResponse, Model
    from openai.types.chat import ChatCompletion as OpenAIChatCompletion
    from openai.types.chat import ChatCompletionChunk as OpenAIChunk

    usage = schemas.Usage.of(3, 2)
    assert usage.model_dump() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    message = schemas.AssistantMessage(content="好的")
    chat = schemas.ChatCompletion(
        id="c", created=1, model="m", choices=[schemas.ChatChoice(message=message, finish_reason="stop")], usage=usage
    )
    assert OpenAIChatCompletion.model_validate(chat.model_dump()).choices[0].message.content == "好的"
    first, last = schemas.Delta(role="assistant", content=""), schemas.Delta()
    assert first.model_dump() == {"role": "assistant", "content": ""} and last.model_dump() == {}
    chunk = schemas.ChatCompletionChunk(
        id="c", created=1, model="m", choices=[schemas.ChunkChoice(delta=last, finish_reason="length")]
    )
    assert "usage" not in chunk.model_dump() and chunk.model_dump()["choices"][0]["delta"] == {}
    assert OpenAIChunk.model_validate(chunk.model_dump()).choices[0].finish_reason == "length"
    text = schemas.Completion(
        id="t", created=1, model="m", choices=[schemas.CompletionChoice(text="款", finish_reason="length")]
    )
    assert text.model_dump()["choices"][0] == {"index": 0, "text": "款", "finish_reason": "length", "logprobs": None}
    assert OpenAICompletion.model_validate(text.model_dump() | {"usage": usage.model_dump()}).choices[0].text == "款"
    embeddings = schemas.EmbeddingList(
        model="m",
        data=[schemas.Embedding(index=0, embedding=[0.6, 0.8])],
        usage=schemas.EmbeddingUsage(prompt_tokens=2, total_tokens=2),
    )
    assert CreateEmbeddingResponse.model_validate(embeddings.model_dump()).data[0].embedding == [0.6, 0.8]
    card = schemas.ModelList(data=[schemas.ModelCard(id="m")]).model_dump()["data"][0]
    assert Model.model_validate(card).owned_by == "serve.py"


def test_empty_optional_fields_are_left_out_and_errors_have_openai_fields():
    single = schemas.Classification(index=0, label="正面", score=0.9, scores={"负面": 0.1, "正面": 0.9})
    assert "labels" not in single.model_dump()
    multi = single.model_copy(update={"labels": ["正面"]})
    assert multi.model_dump()["labels"] == ["正面"]
    health = schemas.Health(status="ok", task=Task.CLIP, model="m", engine=None, in_flight=0)
    assert health.model_dump() == {"status": "ok", "task": "clip", "model": "m", "engine": None, "in_flight": 0}
    error = error_body(429, "retry").model_dump()
    assert error == {"error": {"message": "retry", "type": "rate_limit_error", "param": None, "code": None}}


# ---- slow: a browser, a load test, the script itself ----------------------------------------------------------


def chromium_or_skip():
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("the browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.slow
def test_web_pages_in_a_real_browser(chat_dir, demo_dir, tmp_path):
    sync_playwright = chromium_or_skip()
    with live_server(chat_dir, "--max_tokens", "24") as (url, state):
        check_pages(sync_playwright, url, state, demo_dir, tmp_path)


def check_pages(sync_playwright, url, state, demo_dir, tmp_path):
    """Type a message and see the answer stream in; upload an image and see its caption."""
    served = state.served
    prompt = served.chat_prompt_ids(QUESTION)
    max_tokens = min(state.args.max_tokens, served.context - len(prompt))  # the page leaves max_tokens out
    expected = served.decode(greedy_ids(served.model, prompt, max_tokens, served.stop_ids))
    image = tmp_path / "blue.png"
    image.write_bytes(png("blue"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_FLAGS)
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#temperature", "0")
        # count the changes of the answer as it streams in
        page.evaluate(
            "window.changes = 0; new MutationObserver(() => window.changes++)"
            ".observe(document.getElementById('history'), {subtree: true, childList: true, characterData: true})"
        )
        page.fill("#message", QUESTION[0]["content"])
        page.click("#send")
        page.wait_for_function("document.getElementById('send').disabled === false", timeout=60000)
        answers = page.locator("#history .assistant").all_inner_texts()
        assert answers[-1].strip() == expected.strip()
        assert page.evaluate("window.changes") > 3  # the answer appeared piece by piece
        with live_server(captioner_folder(demo_dir, tmp_path / "captioner")) as (caption_url, caption_state):
            page.goto(caption_url + "/")
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.getElementById('image').dataset.state === 'done'", timeout=30000)
            caption = page.inner_text("#caption")
            via_api = httpx.post(caption_url + "/v1/caption", files={"file": ("b.png", png("blue"), "image/png")})
            assert caption == via_api.json()["caption"]
        browser.close()


@pytest.mark.slow
def test_load_concurrent_streams_and_malformed_requests(chat_server):
    """8 streaming clients x 3 requests, with malformed requests in between; loopback only, bounded."""
    import asyncio

    url, state = chat_server
    name = state.served.name

    async def one_client(http: httpx.AsyncClient, index: int) -> list[tuple[int, bool]]:
        outcomes = []
        for turn in range(3):
            body = {"model": name, "messages": [{"role": "user", "content": f"类型#裙{index}{turn}"}]}
            async with http.stream(
                "POST", "/v1/chat/completions", json={**body, "max_tokens": 24, "stream": True}
            ) as r:
                lines = [line async for line in r.aiter_lines() if line]
            finished = any('"finish_reason": "' in line for line in lines) and lines[-1] == "data: [DONE]"
            outcomes.append((r.status_code, finished))
            bad = await http.post(
                "/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}
            )
            outcomes.append((bad.status_code, True))
            wrong = await http.post("/v1/chat/completions", json={**body, "max_tokens": "many"})
            outcomes.append((wrong.status_code, True))
        return outcomes

    async def load():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            return await asyncio.gather(*(one_client(http, i) for i in range(8)))

    start = time.monotonic()
    outcomes = [o for client_outcomes in asyncio.run(load()) for o in client_outcomes]
    assert len(outcomes) == 8 * 3 * 3 and time.monotonic() - start < 120
    assert all(status < 500 for status, _ in outcomes)
    assert sorted({status for status, _ in outcomes}) == [200, 400]
    assert all(finished for _, finished in outcomes)  # every stream complete
    assert httpx.get(url + "/health").json() == {**httpx.get(url + "/health").json(), "status": "ok", "in_flight": 0}
    assert client(url).chat.completions.create(model=name, messages=QUESTION, max_tokens=4).choices[0].message


@pytest.mark.slow
def test_the_script_serves_over_http(chat_dir):
    port = free_port()
    command = [sys.executable, str(ROOT / "serve.py"), str(chat_dir), "--device", "cpu", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: port_open(port) or server.poll() is not None, 120) and server.poll() is None
        answer = client(f"http://127.0.0.1:{port}").chat.completions.create(
            model=chat_dir.name, messages=QUESTION, max_tokens=8
        )
        assert answer.choices[0].finish_reason in ("stop", "length")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert server.returncode in (0, -15) and "Traceback" not in output  # uvicorn exits with the signal it got
    assert f"on http://127.0.0.1:{port}" in output


def test_the_script_chats_in_the_terminal(chat_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\nclear\nexit\n"))
    assert serve.main([str(chat_dir), "--chat", "--device", "cpu", "--max_tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "(history cleared)" in out and out.count("> ") == 1


def port_open(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_a_merged_lora_keeps_its_chat_template_and_stop_ids_and_answers_like_the_adapter(demo_dir, tmp_path):
    """Past one machine: the merged folder is a plain model that vLLM / `transformers serve` can load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    import run_seq2seq_ptuning
    from helpers import to_argv
    from merge_lora import merge_lora

    adapter = tmp_path / "lora"
    run_seq2seq_ptuning.main(
        to_argv(
            {
                "model_name_or_path": demo_dir / "models" / "llama-tiny-sft-zh",
                "train_file": demo_dir / "data" / "adgen" / "train.jsonl",
                "output_dir": adapter,
                "finetuning_type": "lora",
                "lora_target": "all",
                "max_steps": 2,
                "max_train_samples": 16,
                "per_device_train_batch_size": 8,
                "learning_rate": 0.05,
                "do_train": True,
                "save_strategy": "no",
                "report_to": "none",
            }
        )
    )
    merged = Path(merge_lora(str(adapter), str(tmp_path / "merged")))
    model = AutoModelForCausalLM.from_pretrained(merged)  # no peft needed
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter).chat_template is not None
    stop_ids = json.loads((adapter / "generation_config.json").read_text())["eos_token_id"]
    assert GenerationConfig.from_pretrained(merged).eos_token_id == stop_ids == model.config.eos_token_id
    answers = []
    for folder in (adapter, merged):
        with live_server(folder) as (url, _):
            answers.append(client(url).chat.completions.create(model=folder.name, messages=QUESTION, max_tokens=16))
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
