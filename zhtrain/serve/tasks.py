"""serve.py's routes for the models that do not chat: a classifier, a CLIP model, an image captioner.

One router per task; the app mounts the one of the task it serves. Each request holds a batch of inputs (texts
or images, at most --max_inputs) and runs one forward at a time on the model. Images come as base64 (a data: URL
too) or, for captions, as a multipart upload; URLs are never fetched. Bad input raises ServeError, which the app
answers with a 400 in OpenAI's error shape.
"""

import base64
import binascii
import io
import json

import torch
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from zhtrain.data.pixels import to_rgb
from zhtrain.serve import routes
from zhtrain.serve.model import ServeError
from zhtrain.serve.schemas import (
    Caption,
    Classification,
    ClassificationList,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    Similarity,
    SimilarityBody,
    SimilarityList,
    TextsBody,
)

classify_router, clip_router, caption_router = APIRouter(), APIRouter(), APIRouter()


def decode_image(data: bytes | str):
    """An uploaded or base64 image (a data: URL too) as RGB; a 400 when it is not an image. URLs are never fetched."""
    # PIL here, not at the top: importing serve.py stays light (`--help`, the tests); loading a model brings it
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        if data.startswith(("http://", "https://")):
            raise ServeError("image URLs are not fetched: send the image itself, base64-encoded")
        try:
            data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
        except (binascii.Error, ValueError):
            raise ServeError("`image` is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ServeError(f"the image cannot be decoded: {exc}") from None


def as_inputs(state, value) -> list:
    """The request's inputs as a list of 1 to --max_inputs items."""
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > state.args.max_inputs:
        raise ServeError(f"`input` needs 1 to {state.args.max_inputs} items (--max_inputs), got {len(items)}")
    return items


# ---- classify ------------------------------------------------------------------------------------------------------


@classify_router.post(routes.CLASSIFY)
async def classify_route(body: TextsBody, request: Request) -> ClassificationList:
    state = request.app.state.serve
    state.check_model(body.model)
    results = await run_in_threadpool(classify, state, as_inputs(state, body.input))
    return ClassificationList(model=state.served.name, data=results)


def classify(state, texts: list[str]) -> list[Classification]:
    served = state.served
    if not all(isinstance(t, str) and t for t in texts):
        raise ServeError("`input` must be a non-empty text or a list of non-empty texts")
    config = served.model.config
    batch = served.tokenizer(texts, padding=True, truncation=True, max_length=served.context, return_tensors="pt")
    with state.model_lock, torch.no_grad():
        logits = served.model(**batch.to(served.model.device)).logits.float()
    multi = config.problem_type == "multi_label_classification"
    probs = (logits.sigmoid() if multi else logits.softmax(-1)).cpu().tolist()
    names = [config.id2label[i] for i in range(len(probs[0]))]
    results = []
    for index, row in enumerate(probs):
        scores = dict(zip(names, (round(p, 6) for p in row)))
        best = names[max(range(len(row)), key=row.__getitem__)]
        labels = [n for n, p in zip(names, row) if p >= 0.5] if multi else None
        results.append(Classification(index=index, label=best, score=scores[best], scores=scores, labels=labels))
    return results


# ---- clip ----------------------------------------------------------------------------------------------------------


@clip_router.post(routes.EMBEDDINGS)
async def embeddings(body: TextsBody, request: Request) -> EmbeddingList:
    """OpenAI's embeddings for texts; items {"image": base64} are images, embedded in the same space."""
    state = request.app.state.serve
    state.check_model(body.model)
    items = as_inputs(state, body.input)
    texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
    images = [(i, decode_image(x.get("image", ""))) for i, x in enumerate(items) if isinstance(x, dict)]
    if any(not t for _, t in texts):
        raise ServeError("`input` texts must not be empty")
    t, v = await run_in_threadpool(clip_features, state, [x for _, x in texts], [x for _, x in images])
    vectors = dict(zip([i for i, _ in texts], t.tolist() if t is not None else []))
    vectors |= dict(zip([i for i, _ in images], v.tolist() if v is not None else []))
    data = [Embedding(index=i, embedding=vectors[i]) for i in range(len(items))]
    tokens = sum(len(state.served.tokenizer(x)["input_ids"]) for _, x in texts)
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingList(model=state.served.name, data=data, usage=usage)


@clip_router.post(routes.SIMILARITY)
async def similarity(body: SimilarityBody, request: Request) -> SimilarityList:
    """An image against candidate texts: cosine similarity and CLIP's softmax over them, best first."""
    state = request.app.state.serve
    state.check_model(body.model)
    texts = as_inputs(state, body.texts)
    t, v = await run_in_threadpool(clip_features, state, texts, [decode_image(body.image)])
    cosine = (v @ t.T)[0]
    probs = (state.served.model.logit_scale.exp() * cosine).softmax(-1)
    data = [
        Similarity(index=i, text=text, cosine=round(cosine[i].item(), 6), probability=round(probs[i].item(), 6))
        for i, text in enumerate(texts)
    ]
    return SimilarityList(model=state.served.name, data=sorted(data, key=lambda d: -d.cosine))


def clip_features(state, texts: list[str] = (), images: list = ()) -> tuple:
    """Unit-length text and image embeddings (each None when not asked)."""
    served, model = state.served, state.served.model
    text_embeds = image_embeds = None
    with state.model_lock, torch.no_grad():
        if texts:
            batch = served.processor.tokenizer(
                list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            text_embeds = model.get_text_features(**batch.to(model.device)).pooler_output
            text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        if images:
            pixels = served.processor(images=list(images), return_tensors="pt")["pixel_values"].to(model.device)
            image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
            image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    return text_embeds, image_embeds


# ---- caption -------------------------------------------------------------------------------------------------------


@caption_router.post(routes.CAPTION)
async def caption_route(request: Request) -> Caption:
    """A caption for a multipart `file` upload or a JSON {"image": base64} (read by hand: two body formats)."""
    state = request.app.state.serve
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        upload = (await request.form()).get("file")
        if upload is None or isinstance(upload, str):
            raise ServeError("send the image as a `file` field")
        image = decode_image(await upload.read())
    else:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServeError("the body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise ServeError('send {"image": "<base64>"} or a multipart `file`')
        state.check_model(body.get("model"))
        image = decode_image(body["image"])
    text = await run_in_threadpool(caption, state, image)
    return Caption(model=state.served.name, caption=text)


def caption(state, image) -> str:
    served = state.served
    pixels = served.processor(image, return_tensors="pt").pixel_values.to(served.model.device)
    with state.model_lock, torch.no_grad():
        ids = served.model.generate(pixels)
    return served.decode(ids[0].tolist())
