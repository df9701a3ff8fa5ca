"""POST /api/inspect: the views of inspection.py for the playground (and anyone), as JSON.

    {"model": "shakespeare/v3c", "view": "attention", "text": "ROMEO: But soft"}
    {"model": ..., "view": "lens", "text": ..., "top": 5}
    {"model": ..., "view": "embeddings"}
    {"model": ..., "view": "surprise", "text": ..., "compare": "shakespeare/v1c"}

The text is a string, or token ids for JSON-token models, at most the model's context. The work
runs off the event loop after a turn at the gate, like a generation; numbers are rounded to what
a page can show (4 decimals). Attention takes an optional `layer` and `head` (from 1) to answer
with that one head as numbers; without them every head comes as `weights_u8`: base64 of one byte
per weight (its value times 255), layers x heads x T x T in that order.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from .. import inspection
from .admission import Server
from .http import ApiError, whole

VIEWS = ("attention", "lens", "embeddings", "surprise")
DECIMALS = 4


async def inspect(http: HttpRequest) -> Response:
    server: Server = http.app.state.server
    body = await server.body(http)
    view = body.get("view")
    if view not in VIEWS:
        raise ApiError(400, f"view must be one of {', '.join(VIEWS)}", param="view")
    info, lm = await server.model(body)
    ids: list[int] = []
    if view != "embeddings":
        if body.get("text") in (None, "", []):
            raise ApiError(400, "give the text to look at", param="text")
        ids = server.prompt_ids(lm, body["text"], param="text")
    other = None
    if view == "surprise" and body.get("compare") not in (None, ""):
        _, other = await server.model({"model": body["compare"]})
    top = whole(body, "top", 5, 1, 20)
    answer = await server.work(_view, view, lm, ids, other, top, body)
    return JSONResponse({"model": info.id, "view": view, **answer})


def _view(view: str, lm: Any, ids: list[int], other: Any, top: int, body: dict[str, Any]) -> dict[str, Any]:
    model, tokenizer = lm.model, lm.tokenizer
    if view == "attention":
        result = inspection.attention(model, tokenizer, ids)
        weights = result.weights
        layers, heads = weights.shape[:2]
        answer = {"tokens": result.tokens, "layers": layers, "heads": heads}
        if body.get("layer") is not None or body.get("head") is not None:
            layer, head = whole(body, "layer", layers, 1, layers), whole(body, "head", 1, 1, heads)
            return {**answer, "weights": _rounded(weights[layer - 1: layer, head - 1: head])}
        # Every head at once is layers x heads x T x T numbers (2.4 million for `hyper` at 256 tokens:
        # 32 MB as JSON lists): as bytes instead, each weight times 255, base64 (3 MB), enough to draw
        return {**answer, "weights_u8": base64.b64encode(np.round(weights * 255).astype(np.uint8).tobytes()).decode()}
    if view == "lens":
        result = inspection.logit_lens(model, tokenizer, ids, top)
        return {"tokens": result.tokens, "stages": result.stages,
                "top": [[[{"label": label, "prob": round(p, DECIMALS)} for label, p in position] for position in stage]
                        for stage in result.top]}
    if view == "embeddings":
        result = inspection.embeddings(model, tokenizer)
        positions = None if result.positions is None else _rounded(result.positions)
        return {"labels": result.labels, "tokens": _rounded(result.tokens), "positions": positions,
                "explained": [round(e, DECIMALS) for e in result.explained]}
    result = inspection.surprise(model, tokenizer, ids)
    answer: dict[str, Any] = {"tokens": result.tokens, "bits": _rounded(result.bits),
                              "mean": round(result.mean, DECIMALS)}
    if other is not None:
        inspection.check_same_tokenizer(tokenizer, other.tokenizer)
        second = inspection.surprise(other.model, other.tokenizer, ids)
        answer["compare"] = {"bits": _rounded(second.bits), "mean": round(second.mean, DECIMALS),
                             "difference": _rounded(second.bits - result.bits)}
    return answer


def _rounded(array: np.ndarray) -> list:
    """Nested lists of numbers with DECIMALS places (rounded as float64: 5.1911, not 5.19110012)."""
    return np.round(array.astype(np.float64), DECIMALS).tolist()
