"""Anomaly detection on generated traffic: precision, recall, detection delay and false positives.

A population of normal identities (diurnal sessions around their own peak hour, bursts and quick
retries, 1 to 3 addresses each, the odd expired token or content denial, and 5% legitimate batch
users running jobs of 1 to 4 sequential workers at any hour) is generated for ``--days`` days, plus labelled abuse
from day ``--train-days`` on, ``--actors`` actors per kind:

- credential stuffing: stolen API keys tried from 4 rotating addresses, 0.5-2 calls/s, all 401;
- scraping: a valid account walking distinct routes at 1-3 calls/s;
- token exhaustion: 6-20 calls/min, each asking 8k-32k completion tokens and using 90% of them;
- prompt-injection probing: 2-8 calls/min of 2k-10k-token prompts, 60% denied by the content guard;
- low and slow: one call every 20-90 s (1% jitter), day and night, until the end.

Every call is replayed through dsguard's real pipeline (``dsguard.pipeline.Pipeline``) and the real
anomaly checks (``dsguard.checks.anomaly.build``, memory storage, action ``flag``) under a simulated
clock, with stand-ins for the identity check (401 for bad keys) and the content guard (403), and
an app that reports token usage. Scores are collected through the checks' listener.

Printed per method (the online baselines; then an IsolationForest trained with
``dsguard.anomaly.model.train`` on the vectors scored before day ``--train-days``, all normal,
exported to ONNX and run on onnxruntime): per abuse kind the recall (actors flagged at least once)
and the detection delay (the actor's calls, and simulated seconds, from its first call to its
first flag; median and worst); overall the precision (flagged callers that are abusive) and the
false-positive share (normal identities flagged at least once; target <= 1%). ``--sweep`` adds a
summary of the online baselines at other thresholds (each one a full replay).

Run from the repository root:
    python benchmarks/anomaly_eval.py --sweep 7,7.5,9   # what RESULTS.md records (~4 min)
    python benchmarks/anomaly_eval.py --skip-model      # online baselines only (~15 s)
Needs scikit-learn and skl2onnx for the model part (``--skip-model`` otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from _harness import environment, positive_int, table

from dsguard.checks import anomaly
from dsguard.checks.anomaly import Scored
from dsguard.config import AnomalyConfig, parse_config
from dsguard.context import Identity, RequestContext, ResponseInfo
from dsguard.decision import Denial, Forbidden, Unauthenticated
from dsguard.pipeline import Pipeline
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage

PACKAGES = ("dsguard", "numpy", "onnxruntime", "scikit-learn", "skl2onnx")
START = 1_736_121_600.0  # a Monday, 00:00 UTC
DAY = 86400.0
KINDS = ("credential stuffing", "scraping", "token exhaustion", "prompt-injection probing", "low and slow")
CHAT = "/v1/chat/completions"
ANOMALY = """
[anomaly]
action = "flag"
threshold = {threshold}
"""


@dataclasses.dataclass(slots=True)
class Call:
    t: float
    actor: str
    subject: str | None
    ip: str
    method: str = "POST"
    path: str = CHAT
    model: str | None = None
    prompt_chars: int = 0
    max_tokens: int = 0
    usage: int | None = None
    authenticated: bool = True
    content_denied: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Actor:
    name: str
    kind: str  # "normal" or one of KINDS
    keys: tuple[str, ...]


def chat(rng: random.Random, t: float, actor: str, subject: str | None, ip: str, model: str, chars: float,
         max_tokens: int) -> Call:
    prompt_chars = max(1, int(chars))
    usage = prompt_chars // 4 + int(rng.uniform(0.1, 0.9) * max_tokens)
    return Call(t, actor, subject, ip, model=model, prompt_chars=prompt_chars, max_tokens=max_tokens, usage=usage)


def normal_identity(rng: random.Random, index: int, days: int) -> tuple[Actor, list[Call]]:
    name = f"user-{index}"
    batch = rng.random() < 0.05
    ips = [f"10.{index // 250}.{index % 250}.{n}" for n in range(rng.randint(1, 3))]
    center = rng.choice([rng.gauss(14, 2), rng.gauss(21, 2), rng.gauss(3, 2)])
    sessions_per_day = rng.uniform(0.5, 1.5) if batch else rng.lognormvariate(math.log(2.5), 0.6)
    prompt_median = rng.lognormvariate(math.log(800), 0.7)
    max_tokens = rng.choice([256, 512, 1024, 2048])
    models = rng.sample(["deepseek-chat", "deepseek-reasoner", "deepseek-coder"], 2)
    gap_mean = rng.uniform(15, 90)
    calls: list[Call] = []
    for day in range(days):
        for _ in range(_poisson(rng, sessions_per_day)):
            hour = rng.uniform(0, 24) if batch or rng.random() < 0.1 else rng.gauss(center, 3) % 24
            start = START + day * DAY + hour * 3600
            ip = rng.choice(ips)
            if batch:
                calls += _batch_job(rng, start, name, ip, models, prompt_median, max_tokens)
                continue
            t, burst = start, 0
            for _ in range(min(1 + int(rng.expovariate(1 / 7)), 80)):
                calls.append(_normal_call(rng, t, name, ip, models, prompt_median, max_tokens))
                if burst > 0:
                    burst -= 1
                    t += rng.uniform(0.5, 3)
                else:
                    burst = rng.randint(2, 5) if rng.random() < 0.15 else 0
                    t += rng.expovariate(1 / gap_mean)
    return Actor(name, "normal", (f"sub:{name}",)), calls


def _batch_job(rng: random.Random, start: float, name: str, ip: str, models: list[str], prompt_median: float,
               max_tokens: int) -> list[Call]:
    """1 to 4 workers, each sending its next call when the last one's completion has streamed back."""
    calls = []
    per_worker = rng.randint(20, 100)
    for _ in range(rng.randint(1, 4)):
        t = start + rng.uniform(0, 5)
        for _ in range(per_worker):
            call = _normal_call(rng, t, name, ip, models, prompt_median, max_tokens)
            calls.append(call)
            completion = (call.usage or 0) - call.prompt_chars // 4
            t += 0.5 + max(completion, 0) / 60 + rng.expovariate(1)
    return calls


def _normal_call(rng: random.Random, t: float, name: str, ip: str, models: list[str], prompt_median: float,
                 max_tokens: int) -> Call:
    roll = rng.random()
    if roll < 0.05:
        call = Call(t, name, name, ip, method="GET", path="/v1/models")
    elif roll < 0.15:
        chars = int(rng.lognormvariate(math.log(prompt_median), 0.6))
        call = Call(t, name, name, ip, path="/v1/embeddings", model="deepseek-embed", prompt_chars=chars,
                    usage=chars // 4)
    else:
        model = models[0] if rng.random() < 0.8 else models[1]
        call = chat(rng, t, name, name, ip, model, rng.lognormvariate(math.log(prompt_median), 0.6), max_tokens)
        call.content_denied = rng.random() < 0.003
    call.authenticated = rng.random() >= 0.01  # an expired key now and then
    return call


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def _arrivals(rng: random.Random, start: float, end: float, per_second: float) -> list[float]:
    times, t = [], start
    while t < end:
        times.append(t)
        t += rng.expovariate(per_second)
    return times


def abuser(rng: random.Random, kind: str, index: int, begin: float, end: float) -> tuple[Actor, list[Call]]:
    name = f"{kind.split()[0]}-{index}"
    ip = f"203.0.113.{KINDS.index(kind) * 40 + index}"
    duration = rng.uniform(20, 60) * 60
    start = rng.uniform(begin, max(begin, end - duration))
    calls: list[Call] = []
    if kind == "credential stuffing":
        ips = [f"198.51.{100 + index}.{n}" for n in range(4)]
        for n, t in enumerate(_arrivals(rng, start, start + duration, rng.uniform(0.5, 2))):
            calls.append(Call(t, name, None, ips[n % 4], model="deepseek-chat", prompt_chars=40, max_tokens=16,
                              authenticated=False))
        return Actor(name, kind, tuple(f"ip:{a}" for a in ips)), calls
    if kind == "scraping":
        for n, t in enumerate(_arrivals(rng, start, start + rng.uniform(10, 40) * 60, rng.uniform(1, 3))):
            path = rng.choice(["/v1/models/m-", "/v1/files/file-", "/v1/batches/batch-"]) + str(n)
            calls.append(Call(t, name, name, ip, method="GET", path=path))
    elif kind == "token exhaustion":
        for t in _arrivals(rng, start, start + duration, rng.uniform(6, 20) / 60):
            wanted = rng.randint(8192, 32768)
            call = chat(rng, t, name, name, ip, "deepseek-chat", rng.uniform(200, 1500), wanted)
            call.usage = call.prompt_chars // 4 + int(wanted * 0.9)
            calls.append(call)
    elif kind == "prompt-injection probing":
        for t in _arrivals(rng, start, start + duration, rng.uniform(2, 8) / 60):
            call = chat(rng, t, name, name, ip, "deepseek-chat", rng.uniform(8000, 40000), 512)
            call.content_denied = rng.random() < 0.6
            calls.append(call)
    else:
        period = rng.uniform(20, 90)
        t = rng.uniform(begin, begin + DAY / 2)
        while t < end:
            calls.append(chat(rng, t, name, name, ip, "deepseek-chat", rng.uniform(200, 600), 256))
            t += period * rng.uniform(0.99, 1.01)
    return Actor(name, kind, (f"sub:{name}",)), calls


def traffic(identities: int, days: int, train_days: int, actors: int, seed: int
            ) -> tuple[list[Actor], list[Call]]:
    rng = random.Random(seed)
    population, calls = [], []
    for index in range(identities):
        actor, made = normal_identity(rng, index, days)
        population.append(actor)
        calls += made
    begin, end = START + train_days * DAY + 3600, START + days * DAY
    for kind in KINDS:
        for index in range(actors):
            actor, made = abuser(rng, kind, index, begin, end)
            population.append(actor)
            calls += made
    calls.sort(key=lambda c: c.t)
    return population, [c for c in calls if c.t < end]


class SimIdentity:
    """Stands in for the identity checks: valid keys name their subject, others get 401."""

    name = "sim-identity"
    stage = "identity"

    def check(self, ctx: RequestContext) -> Denial | None:
        call: Call = ctx.attributes["sim.call"]
        if not call.authenticated or call.subject is None:
            return Unauthenticated("invalid API key", code="invalid_token", error="invalid_token")
        ctx.identity = Identity(subject=call.subject, method="sim")
        return None


class SimContentGuard:
    name = "sim-prompt-guard"
    stage = "content"

    def check(self, ctx: RequestContext) -> Denial | None:
        call: Call = ctx.attributes["sim.call"]
        return Forbidden("prompt attack detected", code="prompt_injection") if call.content_denied else None


class DirectIO:
    async def read_body(self, limit: int) -> bytes:
        return b""

    async def wait(self, awaitable: Awaitable[Any], timeout: float | None) -> Any:
        return await awaitable


@dataclasses.dataclass
class Run:
    flagged: dict[str, float] = dataclasses.field(default_factory=dict)  # key -> first flag time
    detections: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)  # actor -> delay
    training: list[dict[str, float | None]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    calls: int = 0


def replay(calls: list[Call], actors: list[Actor], config_text: str, *, train_until: float) -> Run:
    clock = [START]
    owner = {key: actor for actor in actors for key in actor.keys}
    first_call: dict[str, tuple[float, int]] = {}
    sent: dict[str, int] = {}
    run = Run()

    def listen(scored: Scored) -> None:
        actor = owner.get(scored.key)
        if scored.score.anomalous:
            run.flagged.setdefault(scored.key, scored.now)
            if actor is not None and actor.kind != "normal" and actor.name not in run.detections:
                began = first_call[actor.name][0]
                run.detections[actor.name] = (sent[actor.name], scored.now - began)
        elif (scored.now < train_until and scored.score.ready and actor is not None and actor.kind == "normal"
              and len(run.training) < 50_000):
            run.training.append(scored.values)

    config = parse_config(config_text, file="anomaly-eval.toml")
    checks = anomaly.build(config, Services(config, MemoryStorage()), clock=lambda: clock[0], listener=listen)
    pipeline = Pipeline([SimIdentity(), SimContentGuard(), *checks], check_timeout=None)
    io = DirectIO()

    async def main() -> None:
        for call in calls:
            clock[0] = call.t
            first_call.setdefault(call.actor, (call.t, 0))
            sent[call.actor] = sent.get(call.actor, 0) + 1
            ctx = RequestContext(call.method, call.path, call.path.encode(), b"", [], call.ip, "https")
            ctx.attributes["sim.call"] = call
            if call.model is not None:
                text = "x" * call.prompt_chars
                body: dict[str, Any] = {"model": call.model}
                if call.path == CHAT:
                    body.update(messages=[{"role": "user", "content": text}], max_tokens=call.max_tokens)
                else:
                    body["input"] = text
                ctx.json = body
            denial = await pipeline.evaluate(ctx, io)
            if denial is None:
                if call.usage is not None:
                    ctx.attributes["llm_usage"] = {"total_tokens": call.usage}
                response = ResponseInfo(status=200, complete=True)
            else:
                response = ResponseInfo(status=denial.status, complete=True, denied_by=denial.check)
            await pipeline.finish(ctx, response, io)
        for check in checks:
            stop: Callable[[], Awaitable[None]] | None = getattr(check, "shutdown", None)
            if stop is not None:
                await stop()

    began = time.perf_counter()
    asyncio.run(main())
    run.seconds = time.perf_counter() - began
    run.calls = len(calls)
    return run


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: list[list[object]]  # per abuse kind: kind, actors, recall, delay in calls, delay in seconds
    recalls: list[str]
    flagged: int
    true: int
    false_normal: int
    normal: int
    other: int

    @property
    def precision(self) -> str:
        return f"{self.true / self.flagged:.1%}" if self.flagged else "-"

    @property
    def false_share(self) -> str:
        return f"{self.false_normal / self.normal:.2%}"


def summarize(run: Run, actors: list[Actor]) -> Summary:
    abusive = {key for actor in actors if actor.kind != "normal" for key in actor.keys}
    normal = [actor for actor in actors if actor.kind == "normal"]
    rows: list[list[object]] = []
    for kind in KINDS:
        members = [actor for actor in actors if actor.kind == kind]
        delays = [run.detections[a.name] for a in members if a.name in run.detections]
        rows.append([kind, len(members), f"{len(delays) / len(members):.0%}",
                     _spread([d[0] for d in delays], "{:.0f}"), _spread([d[1] for d in delays], "{:.0f}")])
    flagged = set(run.flagged)
    false_normal = sum(1 for actor in normal if actor.keys[0] in flagged)
    return Summary(rows, [str(row[2]) for row in rows], len(flagged), len(flagged & abusive), false_normal,
                   len(normal), len(flagged - abusive) - false_normal)


def report(title: str, run: Run, actors: list[Actor]) -> None:
    summary = summarize(run, actors)
    print(f"\n### {title}\n")
    print(table(["abuse", "actors", "recall", "delay: calls (median / worst)", "delay: s (median / worst)"],
                summary.rows))
    print(f"\nprecision (flagged callers that are abusive): {summary.precision} ({summary.true} of {summary.flagged})")
    print(f"false positives: {summary.false_normal} of {summary.normal} normal identities ({summary.false_share}), "
          f"{summary.other} client addresses of normal users")
    print(f"replay: {run.calls} calls in {run.seconds:.1f} s ({run.seconds / run.calls * 1e6:.0f} us per call, "
          "whole in-process pipeline with recording and scoring)")


def _spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} / {fmt.format(max(values))}"


def _thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=positive_int, default=1000)
    parser.add_argument("--days", type=positive_int, default=3)
    parser.add_argument("--train-days", type=positive_int, default=1)
    parser.add_argument("--actors", type=positive_int, default=6, help="actors per abuse kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=None, help="[anomaly] threshold (default: the config's)")
    parser.add_argument("--sweep", type=_thresholds, default=[], help="more thresholds to summarize, e.g. 6,7,9")
    parser.add_argument("--trees", type=positive_int, default=100, help="trees of the IsolationForest")
    parser.add_argument("--quantile", type=float, default=0.9999, help="training-score quantile of the model threshold")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    if args.train_days >= args.days:
        parser.error("--train-days must be less than --days")
    print("\n".join(environment(PACKAGES)))
    actors, calls = traffic(args.identities, args.days, args.train_days, args.actors, args.seed)
    print(f"traffic: {args.identities} normal identities, {args.actors} actors per abuse kind, {args.days} days, "
          f"{len(calls)} calls, seed {args.seed}; abuse from day {args.train_days}")
    threshold = args.threshold if args.threshold is not None else AnomalyConfig().threshold
    train_until = START + args.train_days * DAY
    baseline = replay(calls, actors, ANOMALY.format(threshold=threshold), train_until=train_until)
    report(f"online baselines (threshold {threshold})", baseline, actors)
    if args.sweep:
        rows = []
        for other in sorted({threshold, *args.sweep}):
            run = baseline if other == threshold else replay(calls, actors, ANOMALY.format(threshold=other),
                                                               train_until=train_until)
            summary = summarize(run, actors)
            rows.append([other, *summary.recalls, summary.precision, summary.false_share])
        print("\n### online baselines by threshold (recall per abuse kind)\n")
        print(table(["threshold", *KINDS, "precision", "false positives"], rows))
    if args.skip_model:
        return
    from dsguard.anomaly.model import train

    with tempfile.TemporaryDirectory() as tmp:
        path = train(baseline.training, Path(tmp) / "isolation-forest.onnx", n_estimators=args.trees,
                     quantile=args.quantile)
        print(f"\nmodel: IsolationForest ({args.trees} trees) on {len(baseline.training)} scored vectors of normal "
              f"traffic before day {args.train_days}, threshold at their {args.quantile} quantile")
        forest = replay(calls, actors, ANOMALY.format(threshold=threshold) + f'model = "{path}"\n',
                        train_until=train_until)
        report("IsolationForest (ONNX, onnxruntime)", forest, actors)


if __name__ == "__main__":
    main()
