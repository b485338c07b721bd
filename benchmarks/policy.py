"""Cost of one policy decision: casbin's Enforcer and FastEnforcer against dsguard's compiled policy.

Two RBAC models over the same generated policies (10k and 100k ``p`` rules; one role per 100
rules, a role hierarchy, one user per 10 rules holding two roles, 95% exact objects and 5%
``prefix/*`` objects, actions GET/POST/DELETE/``*``):

  allow-override   g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && (r.act == p.act || p.act == "*"),
                   some(where (p.eft == allow))       (the peer stack's model)
  deny-wins        the same matcher, 10% deny rules,
                   some(where (p.eft == allow)) && !some(where (p.eft == deny))

Requests: *allow* is a user granted an exact object by a rule in the middle of the file (through
one of its roles); *deny* is the same user on an object no rule grants. Every call is timed on its
own (perf_counter_ns); p50 and p99 are reported, and each engine's ratio to casbin's Enforcer.

  Enforcer         casbin.Enforcer(model, policy).enforce(sub, obj, act)
  FastEnforcer     casbin.FastEnforcer(..., cache_key_order=[1, 2]): only rules whose obj and act
                   equal the request's are read; it misses keyMatch patterns and "*" actions, so
                   it is shown for speed only (its disagreements with Enforcer on a random sample
                   of requests are counted at 10k rules)
  dsguard          dsguard.policy.load_policy(model, policy).decide(sub, obj, act)
  dsguard +roles   the same with two roles from the identity (extra g links for the call)

Before timing, every engine's answers to the timed requests are checked against Enforcer's.

Run from the repository root:  python benchmarks/policy.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import casbin
from _harness import environment, positive_int, table

from dsguard.policy import Policy, load_policy

PACKAGES = ("dsguard", "casbin")
MATCHER = 'g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && (r.act == p.act || p.act == "*")'
EFFECTS = {"allow-override": "some(where (p.eft == allow))",
           "deny-wins": "some(where (p.eft == allow)) && !some(where (p.eft == deny))"}
ACTIONS = ("GET", "POST", "DELETE", "*")


def model_text(effect: str) -> str:
    return (f"[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act, eft\n\n"
            f"[role_definition]\ng = _, _\n\n[policy_effect]\ne = {EFFECTS[effect]}\n\n[matchers]\nm = {MATCHER}\n")


@dataclass(frozen=True)
class Workload:
    lines: list[str]
    allow: tuple[str, str, str]
    deny: tuple[str, str, str]
    sample: list[tuple[str, str, str]]


def generate(size: int, *, deny_share: float, seed: int = 7) -> Workload:
    rnd = random.Random(seed)
    roles = [f"role{i}" for i in range(max(10, size // 100))]
    lines = [f"g, {role}, {roles[rnd.randrange(i)]}" for i, role in enumerate(roles) if i and i % 3]
    holders: dict[str, list[str]] = {}
    for user in (f"user{i}" for i in range(size // 10)):
        for role in rnd.sample(roles, 2):
            lines.append(f"g, {user}, {role}")
            holders.setdefault(role, []).append(user)
    rules = []
    for _ in range(size):
        role = rnd.choice(roles)
        pattern = rnd.random() < 0.05
        obj = f"/api/{role}/area{rnd.randrange(100)}/*" if pattern else f"/api/{role}/res{rnd.randrange(10**6)}"
        eft = "deny" if rnd.random() < deny_share else "allow"
        rules.append((role, obj, rnd.choice(ACTIONS), eft))
    middle = next(r for r in rules[size // 2:] if "*" not in r[1] and r[2] != "*" and r[3] == "allow"
                  and r[0] in holders)
    user = holders[middle[0]][0]
    lines += [f"p, {', '.join(rule)}" for rule in rules]
    users = [f"user{i}" for i in range(size // 10)]
    sample = []
    for _ in range(100):  # mostly granted: a holder of the rule's role, on its object and action
        role, obj, act, _eft = rnd.choice([r for r in rules if r[0] in holders])
        act = rnd.choice(ACTIONS[:3]) if act == "*" else act
        sample.append((rnd.choice(holders[role]), obj.replace("*", "x"), act))
    sample += [(rnd.choice(users), rnd.choice(rules)[1].replace("*", "x"), rnd.choice(ACTIONS[:3]))
               for _ in range(100)]
    return Workload(lines, (user, middle[1], middle[2]), (user, "/api/nothing/here", "GET"), sample)


def time_calls(fn: Callable[[], object], budget: float, *, most: int, least: int = 5) -> list[float]:
    """Microseconds of each call, as many calls as ``budget`` seconds allow (within least..most)."""
    fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    gc.disable()
    try:
        while len(samples) < most and (len(samples) < least or time.perf_counter() < deadline):
            start = time.perf_counter_ns()
            fn()
            samples.append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    return samples


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def fmt(us: float) -> str:
    return f"{us / 1000:.1f} ms" if us >= 1000 else f"{us:.1f} µs"


def engines(model: Path, policy: Path) -> tuple[dict[str, Callable[[str, str, str], bool]], dict[str, float]]:
    loaded: dict[str, Callable[[str, str, str], bool]] = {}
    load_seconds = {}
    start = time.perf_counter()
    enforcer = casbin.Enforcer(str(model), str(policy))
    load_seconds["Enforcer"] = time.perf_counter() - start
    loaded["Enforcer"] = enforcer.enforce
    fast_enforcer = getattr(casbin, "FastEnforcer", None)
    if fast_enforcer is not None:
        start = time.perf_counter()
        fast = fast_enforcer(str(model), str(policy), cache_key_order=[1, 2])
        load_seconds["FastEnforcer"] = time.perf_counter() - start
        loaded["FastEnforcer"] = fast.enforce
    start = time.perf_counter()
    compiled: Policy = load_policy(model, policy)
    load_seconds["dsguard"] = time.perf_counter() - start
    assert compiled.engine == "compiled", compiled.fallback_reason
    loaded["dsguard"] = lambda sub, obj, act: compiled.decide(sub, obj, act).allowed
    roles = frozenset({"role1", "role2"})
    loaded["dsguard +roles"] = lambda sub, obj, act: compiled.decide(sub, obj, act, roles=roles).allowed
    return loaded, load_seconds


def run(size: int, effect: str, args: argparse.Namespace) -> list[list[str]]:
    workload = generate(size, deny_share=0.1 if effect == "deny-wins" else 0.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, policy = Path(tmp) / "model.conf", Path(tmp) / "policy.csv"
        model.write_text(model_text(effect), encoding="utf-8")
        policy.write_text("\n".join(workload.lines) + "\n", encoding="utf-8")
        loaded, load_seconds = engines(model, policy)
    reference = loaded["Enforcer"]
    expected = {"allow": reference(*workload.allow), "deny": reference(*workload.deny)}
    if expected != {"allow": True, "deny": False}:
        raise SystemExit(f"the generated workload is wrong: Enforcer answered {expected}")
    disagreements = {}
    if size <= 10_000:
        truth = [reference(*request) for request in workload.sample]
        for name, fn in loaded.items():
            if name != "dsguard +roles":
                disagreements[name] = sum(fn(*r) != t for r, t in zip(workload.sample, truth, strict=True))
    baseline: dict[str, float] = {}
    for name, fn in loaded.items():
        for kind in ("allow", "deny"):
            request = getattr(workload, kind)
            answer = fn(*request)
            slow = name in ("Enforcer",) or (name == "FastEnforcer" and size > 50_000)
            samples = time_calls(lambda fn=fn, request=request: fn(*request),  # type: ignore[misc]
                                 args.casbin_budget if slow else args.budget, most=args.calls)
            p50, p99 = statistics.median(samples), percentile(samples, 0.99)
            if name == "Enforcer":
                baseline[kind] = p50
            ratio = baseline[kind] / p50 if p50 else float("inf")
            wrong = "" if answer == expected[kind] else " (WRONG)"
            agree = "" if name not in disagreements else f"{disagreements[name]}/{len(workload.sample)}"
            rows.append([f"{size:,}", effect, kind, name + wrong, fmt(p50), fmt(p99), f"{ratio:,.0f}x",
                         str(len(samples)), f"{load_seconds.get(name.split()[0], 0):.2f} s", agree])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows



def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 100_000], help="p rules per policy")
    p.add_argument("--effects", nargs="+", choices=sorted(EFFECTS), default=sorted(EFFECTS))
    p.add_argument("--calls", type=positive_int, default=20_000, help="most timed calls per engine and request")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per fast engine and request")
    p.add_argument("--casbin-budget", type=float, default=6.0,
                   help="seconds of timed calls per slow casbin engine and request (at least 5 calls)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    rows = []
    for size in args.sizes:
        for effect in args.effects:
            rows += run(size, effect, args)
    print("\n".join(environment(PACKAGES)))
    print()
    print(table(["rules", "model", "request", "engine", "p50", "p99", "p50 vs Enforcer", "calls", "load",
                 "disagrees (of sample)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
