from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path


def models(request: HttpRequest) -> JsonResponse:
    ctx = request.META["dsguard.context"]
    return JsonResponse({"object": "list", "data": [{"id": "deepseek-r1-distill-qwen-1.5b"}],
                         "client_ip": ctx.client_ip})


urlpatterns = [path("v1/models", models)]
