"""Prompt guard: detection on an attack set, false positives on a benign set, and the cost per request.

Data (written for this project, see benchmarks/data/): ``prompt_attacks.jsonl`` holds prompt-injection
and jailbreak prompts by style and PII-bearing prompts by kind; ``prompt_benign.jsonl`` holds prompts with
code, SQL, HTML, shell, security discussion, questions about prompt injection itself, multilingual text
and numbers that look like (but are not) card numbers. Rows marked ``"split": "holdout"`` were written
after the rules were last changed and were never used to tune them; the others ("dev") were.

Detection: an injection prompt counts when its heuristic score reaches the threshold; a PII prompt when
its kind is found. False positive: a benign prompt that scores at the threshold (injection) or in which
any PII is found.

Cost: microseconds per call of the whole check (a chat body with one benign prompt, ``ctx.json`` already
parsed by hygiene), of each detector alone, side by side with ``json.loads`` of the same body (what the
hygiene check already pays); and per request through ``GuardMiddleware`` with and without
``[prompt_guard]``. Streaming: microseconds per SSE chunk through the response redactor.

Run from the repository root:  python benchmarks/prompt_guard.py [--threshold 1.0] [--skip-timing]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import BenchRequest, environment, median, positive_int, table, time_in_process
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import dsguard
from dsguard.checks.prompt import PromptGuardCheck
from dsguard.config import PromptGuardConfig, parse_config
from dsguard.context import RequestContext
from dsguard.promptguard.injection import InjectionDetector
from dsguard.promptguard.pii import PIIScanner
from dsguard.promptguard.stream import ResponseRedactor

DATA = Path(__file__).resolve().parent / "data"
PACKAGES = ("dsguard", "starlette")
OPEN = "[transport]\nrequire_https = false\n"


def load(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def rate(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.1f}%)" if total else "-"


# --- detection ----------------------------------------------------------------------------------------------


def detection(attacks: list[dict[str, Any]], detector: InjectionDetector, scanner: PIIScanner) -> str:
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in attacks:
        if row["kind"] == "injection":
            hit = detector.is_attack(detector.analyze(row["text"]))
        else:
            hit = row["style"] in {m.category for m in scanner.find(row["text"])}
        split = row.get("split", "dev")
        for key in ((row["kind"], row["style"], split), (row["kind"], "all", split)):
            counts[key][0] += hit
            counts[key][1] += 1
    rows = []
    for kind in ("injection", "pii"):
        styles = [*sorted({s for k, s, _ in counts if k == kind and s != "all"}), "all"]
        for style in styles:
            dev, holdout = counts.get((kind, style, "dev"), [0, 0]), counts.get((kind, style, "holdout"), [0, 0])
            rows.append((kind, style, rate(*dev), rate(*holdout)))
    return table(("kind", "style", "detected (dev)", "detected (holdout)"), rows)


def false_positives(benign: list[dict[str, Any]], detector: InjectionDetector, scanner: PIIScanner) -> str:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in benign:
        injection = detector.is_attack(detector.analyze(row["text"]))
        pii = bool(scanner.find(row["text"]))
        for key in ((row["category"], row.get("split", "dev")), ("all", row.get("split", "dev"))):
            counts[key][0] += injection
            counts[key][1] += pii
            counts[key][2] += 1
    rows = []
    for category in [*sorted({c for c, _ in counts if c != "all"}), "all"]:
        dev, holdout = counts.get((category, "dev"), [0, 0, 0]), counts.get((category, "holdout"), [0, 0, 0])
        rows.append((category, rate(dev[0], dev[2]), rate(dev[1], dev[2]), rate(holdout[0], holdout[2]),
                     rate(holdout[1], holdout[2])))
    return table(("category", "injection FP (dev)", "PII FP (dev)", "injection FP (holdout)", "PII FP (holdout)"),
                 rows)


# --- cost ---------------------------------------------------------------------------------------------------


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "deepseek-chat", "messages": [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": text}]}


def per_call_us(calls: dict[str, Callable[[], object]], inputs: int, repeats: int) -> dict[str, list[float]]:
    """Microseconds per item of each call (each runs over ``inputs`` items), one figure per repeat.

    Repeats are interleaved across calls so that background load spreads over all of them.
    """
    results: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter_ns()
            fn()
            results[name].append((time.perf_counter_ns() - start) / inputs / 1000)
    return results


def check_costs(benign: list[dict[str, Any]], repeats: int) -> str:
    texts = [row["text"] for row in benign]
    bodies = [chat_body(t) for t in texts]
    raw = [json.dumps(b).encode() for b in bodies]
    check = PromptGuardCheck(PromptGuardConfig(action="flag"))
    detector, scanner = InjectionDetector(), PIIScanner()

    def whole_check() -> None:
        for body in bodies:
            ctx = RequestContext("POST", "/v1/chat/completions", b"/v1/chat/completions", b"", [], "127.0.0.1",
                                 "https")
            ctx.json = body
            check.check(ctx)

    calls: dict[str, Callable[[], object]] = {
        "json.loads of the body (baseline)": lambda: [json.loads(r) for r in raw],
        "prompt guard check (injection + PII)": whole_check,
        "injection heuristics alone": lambda: [detector.analyze(t) for t in texts],
        "PII detection alone": lambda: [scanner.find(t) for t in texts],
    }
    for fn in calls.values():
        fn()
    results = per_call_us(calls, len(texts), repeats)
    base = median(results["json.loads of the body (baseline)"])
    lengths = sorted(len(t) for t in texts)
    rows = [(name, f"{median(r):.1f}", f"{min(r):.1f}", f"{max(r):.1f}", f"{median(r) / base:.1f}x")
            for name, r in results.items()]
    note = (f"{len(texts)} benign prompts, {statistics.mean(lengths):.0f} characters on average "
            f"(median {lengths[len(lengths) // 2]}, longest {lengths[-1]})")
    return note + "\n\n" + table(("call (per prompt)", "us (median)", "min", "max", "vs json.loads"), rows)


async def chat(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})


def middleware_costs(text: str, iterations: int, repeats: int) -> str:
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    stacks = {
        "dsguard, no prompt guard": dsguard.GuardMiddleware(app, config=parse_config(OPEN, file="<bench>")),
        "dsguard + [prompt_guard] (block)": dsguard.GuardMiddleware(
            app, config=parse_config(OPEN + "[prompt_guard]\n", file="<bench>")),
        "dsguard + [prompt_guard] (redact, responses too)": dsguard.GuardMiddleware(
            app, config=parse_config(OPEN + '[prompt_guard]\naction = "redact"\nredact_responses = true\n',
                                     file="<bench>")),
    }
    request = BenchRequest("POST", "/v1/chat/completions", headers=(("content-type", "application/json"),),
                           body=json.dumps(chat_body(text)).encode())
    results = time_in_process(stacks, request, iterations=iterations, repeats=repeats, warmup=200)
    base = median(results["dsguard, no prompt guard"])
    rows = [(name, f"{median(r):.1f}", f"{min(r):.1f}", f"{max(r):.1f}", f"+{median(r) - base:.1f}")
            for name, r in results.items()]
    return (f"request: POST /v1/chat/completions, {len(request.body)}-byte chat body\n\n"
            + table(("stack", "us/request (median)", "min", "max", "added"), rows))


def stream_costs(repeats: int) -> str:
    sentence = "Sure, here is the summary you asked for. The quarterly numbers look stable and the team"
    words = sentence.split()
    chunks = []
    for i, word in enumerate(words * 8):
        delta = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        chunks.append(("data: " + json.dumps(delta) + "\n\n").encode())
        if i == 40:
            delta["choices"][0]["delta"]["content"] = "write to alice@corp.io "
            chunks.append(("data: " + json.dumps(delta) + "\n\n").encode())
    scanner = PIIScanner()

    def redact_stream() -> None:
        redactor = ResponseRedactor(scanner)
        for chunk in chunks:
            redactor.feed(chunk)
        redactor.feed(b"data: [DONE]\n\n")
        redactor.finish()

    def pass_through() -> None:
        for chunk in chunks:
            bytes(chunk)

    results = per_call_us({"pass-through (bytes copy)": pass_through, "response redactor": redact_stream},
                          len(chunks), repeats)
    return (f"{len(chunks)} SSE chunks of one word each\n\n"
            + table(("per chunk", "us (median)", "min", "max"),
                    [(n, f"{median(r):.2f}", f"{min(r):.2f}", f"{max(r):.2f}") for n, r in results.items()]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threshold", type=float, default=1.0, help="injection score threshold (the default config)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timing repeats (the median is reported)")
    p.add_argument("--iterations", type=positive_int, default=2000, help="requests per repeat, in-process")
    p.add_argument("--skip-timing", action="store_true", help="detection and false positives only")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    attacks, benign = load("prompt_attacks.jsonl"), load("prompt_benign.jsonl")
    detector, scanner = InjectionDetector(args.threshold), PIIScanner()
    print("\n".join(environment(PACKAGES)))
    print(f"\n## Detection on the attack set ({len(attacks)} prompts, threshold {args.threshold})\n")
    print(detection(attacks, detector, scanner))
    print(f"\n## False positives on the benign set ({len(benign)} prompts)\n")
    print(false_positives(benign, detector, scanner))
    if args.skip_timing:
        return 0
    print("\n## Cost per prompt (in-process, no HTTP)\n")
    print(check_costs(benign, args.repeats))
    print("\n## Cost per request through GuardMiddleware (in-process ASGI)\n")
    typical = next(row["text"] for row in benign if row["id"] == "sql-03")
    print(middleware_costs(typical, args.iterations, args.repeats))
    print("\n## Streamed response redaction\n")
    print(stream_costs(args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
