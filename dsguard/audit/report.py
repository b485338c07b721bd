"""Compliance reports: a standard's controls, each with pass/fail and its evidence, as JSON or HTML.

The HTML is rendered by jinja2 with autoescaping from ``templates/report.html``: one file with
its styles inline, readable on screen and printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..crypto.keys import PublicKey
from .controls import collect_log, evaluate, utc
from .standards import STANDARDS


def build_report(config: Config, standard: str, *, audit_paths: list[Path], since: float | None = None,
                 until: float | None = None, public_keys: Mapping[str, PublicKey] | None = None,
                 now: float | None = None) -> dict[str, Any]:
    """The report of ``standard`` (``pci-dss``, ``gdpr`` or ``hipaa``) as a JSON-ready mapping."""
    chosen = STANDARDS[standard]
    log = collect_log(audit_paths, since=since, until=until, public_keys=public_keys)
    controls = evaluate(config, log)
    rows = []
    for control_id, requirements in chosen.requirements:
        control = controls[control_id]
        rows.append({"id": control.id, "title": control.title, "requirements": list(requirements),
                     "status": control.status, "evidence": list(control.evidence)})
    counts = {status: sum(row["status"] == status for row in rows) for status in ("pass", "fail", "n/a")}
    return {
        "standard": chosen.key,
        "title": chosen.title,
        "generated_at": utc(time.time() if now is None else now),
        "generator": f"dsguard {__version__}",
        "config": config.source,
        "audit": log.paths,
        "period": {"since": utc(since), "until": utc(until)},
        "summary": {"passed": counts["pass"], "failed": counts["fail"], "not_applicable": counts["n/a"],
                    "result": "pass" if counts["fail"] == 0 else "fail"},
        "denials": dict(log.denials.most_common()),
        "decisions": dict(sorted(log.decisions.items())),
        "controls": rows,
    }


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained, printable HTML page."""
    import jinja2

    template_text = resources.files("dsguard.audit").joinpath("templates/report.html").read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True)
    return environment.from_string(template_text).render(report=report)
