"""examples/fastapi_app.py and examples/flask_app.py, served by real servers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from .conftest import run_uvicorn, run_werkzeug

# The example configuration trusts a reverse proxy on 127.0.0.1 that terminated TLS.
VIA_PROXY = {"x-forwarded-proto": "https", "x-forwarded-for": "198.51.100.4"}


def servers() -> list[tuple[str, Callable[[Any], AbstractContextManager[str]]]]:
    return [("examples.fastapi_app", run_uvicorn), ("examples.flask_app", run_werkzeug)]


@pytest.fixture(params=servers(), ids=["fastapi", "flask"])
def example_url(request: pytest.FixtureRequest) -> Any:
    module_name, run = request.param
    module = __import__(module_name, fromlist=["app"])
    with run(module.app) as url:
        yield url


def test_example_serves_through_the_trusted_proxy(example_url: str) -> None:
    response = httpx.get(example_url + "/v1/models", headers=VIA_PROXY)
    assert response.status_code == 200
    assert response.json()["client_ip"] == "198.51.100.4"
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


def test_example_refuses_plain_http(example_url: str) -> None:
    response = httpx.get(example_url + "/v1/models")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "https_required"


def test_example_chat_route_requires_an_identity(example_url: str) -> None:
    response = httpx.post(example_url + "/v1/chat/completions", json={"model": "r1"}, headers=VIA_PROXY)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_example_rejects_non_json_bodies(example_url: str) -> None:
    response = httpx.post(example_url + "/v1/chat/completions", content=b"model=r1", headers={
        **VIA_PROXY, "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415


def test_django_example_is_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples" / "django"))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "guarded_site.settings")
    sys.modules.pop("guarded_site.wsgi", None)
    from guarded_site.wsgi import application

    with run_werkzeug(application) as url:
        allowed = httpx.get(url + "/v1/models", headers=VIA_PROXY)
        refused = httpx.get(url + "/v1/models")
    assert allowed.json()["client_ip"] == "198.51.100.4"
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "https_required"
