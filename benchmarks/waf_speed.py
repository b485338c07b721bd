"""What the WAF costs on a typical API request: µs per request at paranoia 1.

The request is a JSON chat completion (POST /v1/chat/completions?user=alice&stream=false, a
~230-byte body, User-Agent, Content-Type, Authorization, Accept headers). Timed side by side:

- **collect**: building the inspected variables alone (query, headers, JSON fields);
- **check (warm)**: the whole WAF check on the same request again and again, so repeated
  values hit the engine's result cache (what a steady stream of similar calls costs);
- **check (cold)**: every call carries fresh values (a new user, model name, header values and
  JSON field), so every value is decoded and matched (the worst case for a request this size).

for the built-in rules and, when found, a CRS directory loaded through the SecLang engine.

    python benchmarks/waf_speed.py                 # what RESULTS.md records
    python benchmarks/waf_speed.py --crs PATH
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import environment, table

from dsguard.checks.waf import WAFCheck
from dsguard.config import WAFConfig
from dsguard.context import RequestContext
from dsguard.waf import RuleSet, builtin_rule_set, crs_rule_set
from dsguard.waf.seclang import DEBIAN_CRS
from dsguard.waf.targets import collect

GOAL_US = 50.0


def chat_request(n: int = 0) -> RequestContext:
    suffix = "" if n == 0 else f"-{n}"
    body = {"model": f"deepseek-chat{suffix}", "temperature": 0.7, "max_tokens": 256, "stream": False,
            "user": f"alice{suffix}", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                                   {"role": "user", "content": "Write a haiku about the sea."}]}
    raw = json.dumps(body).encode()
    headers = [(b"host", b"api.example.com"), (b"user-agent", f"OpenAI/Python 1.40.0{suffix}".encode()),
               (b"content-type", b"application/json"), (b"accept", b"application/json"),
               (b"authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"),
               (b"content-length", str(len(raw)).encode()), (b"x-client-request-id", f"req{suffix}".encode())]
    ctx = RequestContext("POST", "/v1/chat/completions", b"/v1/chat/completions",
                         f"user=alice{suffix}&stream=false".encode(), headers, "127.0.0.1", "https")
    ctx.body = raw
    ctx.json = body
    return ctx


def measure(check: WAFCheck, number: int, repeats: int) -> dict[str, float]:
    warm = chat_request()
    assert check.check(warm) is None, "the typical request must pass"
    fresh = itertools.count(1)
    colds = [chat_request(next(fresh)) for _ in range(number * repeats + 10)]
    cold_iter = iter(colds)

    def cold() -> None:
        check.check(next(cold_iter))

    def collect_only() -> None:
        collect(warm.method, warm.path, warm.raw_path, warm.query_string, warm.headers.raw, warm.body,
                warm.media_type, warm.json)

    calls: dict[str, Callable[[], object]] = {"collect": collect_only, "check (warm)": lambda: check.check(warm),
                                              "check (cold)": cold}
    return {name: min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6 for name, fn in calls.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crs", type=Path, default=DEBIAN_CRS if DEBIAN_CRS.is_dir() else None)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sets: list[tuple[str, RuleSet]] = [("built-in", builtin_rule_set())]
    if args.crs is not None:
        sets.append((f"CRS {args.crs}", crs_rule_set(args.crs)))
    print("\n".join(environment(["google-re2"])))
    rows = []
    for name, rule_set in sets:
        check = WAFCheck(WAFConfig(paranoia=1), rule_set)
        results = measure(check, args.number, args.repeats)
        rows.append([name, len(check.engine.rules), check.engine.group_count,
                     *(f"{results[k]:.1f}" for k in ("collect", "check (warm)", "check (cold)")),
                     "yes" if results["check (cold)"] <= GOAL_US else "no"])
    print(f"\nµs per request at paranoia 1, best of {args.repeats} x {args.number} (goal <= {GOAL_US:.0f} µs)\n")
    print(table(["rules", "rules at PL1", "scan groups", "collect", "check (warm)", "check (cold)",
                 "cold <= goal"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
