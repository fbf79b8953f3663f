"""The floor of `make bench`: the least a FastAPI endpoint on this stack costs per request.

``POST /predict`` reads the body, decodes it with msgspec (a plain JSON decode, no schema) and
returns a constant JSON body. No key check, validation, model, metrics or middleware: what is
left is uvicorn, Starlette's routing and FastAPI's request handling, which every service pays too.
run.py starts it like a service (uvicorn, one worker, no access log) and loads it with the same
wrk command in the same run, so a service's req/s divided by this one's is the share of the
floor the service reaches.
"""

from __future__ import annotations

import msgspec
from fastapi import FastAPI, Request, Response

app = FastAPI(title="floor")
_decode = msgspec.json.Decoder()
_ANSWER = b'{"probability":0.5,"prediction":0,"model_version":"1","threshold":0.5}'


@app.post("/predict")
async def predict(request: Request) -> Response:
    """Read and decode the body; answer a constant."""
    _decode.decode(await request.body())
    return Response(_ANSWER, media_type="application/json")


@app.get("/ready")
async def ready() -> dict[str, str]:
    """Ready as soon as it answers (nothing to load)."""
    return {"status": "ready"}
