"""A FastAPI app guarded by dsguard in one line.

    DSGUARD_CONFIG=examples/dsguard.toml uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Depends, FastAPI, Request

from dsguard import GuardMiddleware, Identity
from dsguard.adapters.fastapi import require

CONFIG = os.environ.get("DSGUARD_CONFIG", str(Path(__file__).with_name("dsguard.toml")))

app = FastAPI(title="guarded API")
app.add_middleware(GuardMiddleware, config=CONFIG)


@app.get("/v1/models")
def models(request: Request) -> dict[str, object]:
    ctx = request.state.dsguard
    return {"object": "list", "data": [{"id": "deepseek-r1-distill-qwen-1.5b", "object": "model"}],
            "client_ip": ctx.client_ip}


@app.post("/v1/chat/completions")
def chat(body: dict[str, object], identity: Identity = Depends(require(scopes=["chat"]))) -> dict[str, object]:
    return {"object": "chat.completion", "model": body.get("model"), "caller": identity.subject}
