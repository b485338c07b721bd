"""Django's WSGI application behind dsguard: one line around ``get_wsgi_application()``.

    cd examples/django && DSGUARD_CONFIG=../dsguard.toml gunicorn guarded_site.wsgi
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.wsgi import get_wsgi_application

from dsguard import GuardWSGIMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "guarded_site.settings")
CONFIG = os.environ.get("DSGUARD_CONFIG", str(Path(__file__).parents[2] / "dsguard.toml"))

application = GuardWSGIMiddleware(get_wsgi_application(), config=CONFIG)
