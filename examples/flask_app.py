"""A Flask app guarded by dsguard in one line.

    DSGUARD_CONFIG=examples/dsguard.toml flask --app examples.flask_app run
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, g, request

from dsguard.adapters.flask import FlaskGuard

CONFIG = os.environ.get("DSGUARD_CONFIG", str(Path(__file__).with_name("dsguard.toml")))

app = Flask(__name__)
guard = FlaskGuard(app, config=CONFIG)


@app.get("/v1/models")
def models() -> dict[str, object]:
    return {"object": "list", "data": [{"id": "deepseek-r1-distill-qwen-1.5b", "object": "model"}],
            "client_ip": g.dsguard.client_ip}


@app.post("/v1/chat/completions")
@guard.require(scopes=["chat"])
def chat() -> dict[str, object]:
    body = request.get_json()
    return {"object": "chat.completion", "model": body.get("model"), "caller": g.identity.subject}
