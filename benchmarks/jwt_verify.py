"""Cost of verifying a bearer JWT per algorithm: plain pyjwt against dsguard's JWT check, side by side.

For each algorithm (HS256, RS256, ES256, EdDSA), in one asyncio loop, repeats interleaved:
  pyjwt          jwt.decode with the key and the same claim rules (iss, aud, exp/nbf/iat with
                 leeway, required claims): the cold cost every request pays without a cache
  dsguard miss   the JWT check on a token it has not seen before (a fresh token each call):
                 header and size checks, key lookup, pyjwt verification, max_ttl, identity
                 mapping, revocation lookup, cache insert
  dsguard hit    the JWT check on a token it verified before (the verified-token cache), the
                 revocation lookup included
  hit, no revocation  the same with ``[identity] revocation = false``: what the lookup costs

Keys come from a local JWKS file (HS256 from a secret); revocation uses memory storage.
Tokens are signed before timing; every call builds nothing but is handed a ready RequestContext.

Run from the repository root:  python benchmarks/jwt_verify.py [--number 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
from _harness import environment, median, positive_int, table
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dsguard.config import Config, parse_config
from dsguard.context import RequestContext
from dsguard.decision import Denial
from dsguard.services import Services
from dsguard.storage.memory import MemoryStorage

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")
PACKAGES = ("dsguard", "pyjwt", "cryptography")
ISSUER = "https://idp.example.com"
AUDIENCE = "deepseek-api"
SECRET_ENV = "DSGUARD_BENCH_HS256_SECRET"
LEEWAY = 5
REQUIRED = ["exp", "iat", "sub"]
PATHS = ("pyjwt", "dsguard miss", "dsguard hit", "hit, no revocation")


class Signer:
    """A signing key of one algorithm, and what verifies its tokens (pyjwt key, config section)."""

    def __init__(self, algorithm: str, workdir: Path) -> None:
        self.algorithm = algorithm
        self.kid = f"bench-{algorithm.lower()}"
        if algorithm == "HS256":
            secret = secrets.token_urlsafe(32)
            os.environ[SECRET_ENV] = secret
            self.signing_key: Any = secret
            self.verifying_key: Any = secret
            self.key_source = f'secret = "env:{SECRET_ENV}"'
            return
        if algorithm == "RS256":
            self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(self.signing_key.public_key(), as_dict=True)
        elif algorithm == "ES256":
            self.signing_key = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(self.signing_key.public_key(), as_dict=True)
        else:
            self.signing_key = ed25519.Ed25519PrivateKey.generate()
            jwk = OKPAlgorithm.to_jwk(self.signing_key.public_key(), as_dict=True)
        self.verifying_key = self.signing_key.public_key()
        jwks = workdir / f"jwks-{algorithm}.json"
        jwks.write_text(json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": algorithm, "use": "sig"}]}))
        self.key_source = f'jwks_file = "{jwks}"'

    def token(self, now: int) -> str:
        claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600,
                  "jti": secrets.token_urlsafe(12), "scope": "chat read", "roles": ["user"]}
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm, headers={"kid": self.kid})

    def config(self, *, revocation: bool = True) -> Config:
        text = (f"[identity]\nrevocation = {str(revocation).lower()}\n"
                f'[identity.jwt]\nalgorithms = ["{self.algorithm}"]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
                f'{self.key_source}\nmax_ttl = "15m"\nleeway = "{LEEWAY}s"\n')
        return parse_config(text, file="<jwt_verify.py>")

    def pyjwt_decode(self, token: str) -> None:
        jwt.decode(token, self.verifying_key, algorithms=[self.algorithm], audience=AUDIENCE, issuer=ISSUER,
                   leeway=LEEWAY, options={"require": REQUIRED})


def context(token: str) -> RequestContext:
    return RequestContext("POST", "/v1/chat/completions", b"/v1/chat/completions", b"",
                          [(b"host", b"127.0.0.1:8000"), (b"authorization", f"Bearer {token}".encode())],
                          "127.0.0.1", "https")


async def jwt_check(config: Config) -> Any:
    """dsguard's JWT check for ``config``, started."""
    from dsguard.checks import jwt as jwt_checks

    checks = jwt_checks.build(config, Services(config, MemoryStorage()))
    check = next((c for c in checks if c.name == "jwt"), checks[0])
    startup = getattr(check, "startup", None)
    if startup is not None:
        await startup()
    return check


async def outcome_of(check: Any, ctx: RequestContext) -> Any:
    """What the check decides: None, or the Denial it returned or raised."""
    try:
        outcome = check.check(ctx)
        return await outcome if inspect.isawaitable(outcome) else outcome
    except Denial as denial:
        return denial


async def sanity(signer: Signer, check: Any, now: int) -> list[str]:
    """What is wrong with the set-up: the check must accept a good token and deny a tampered one."""
    problems = []
    token = signer.token(now)
    for attempt in ("first", "repeat"):
        ctx = context(token)
        outcome = await outcome_of(check, ctx)
        if outcome is not None or ctx.identity is None or ctx.identity.subject != "alice":
            problems.append(f"{signer.algorithm}: {attempt} call with a good token gave {outcome!r}, "
                            f"identity {ctx.identity!r}")
    head, payload, signature = signer.token(now).split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    if await outcome_of(check, context(tampered)) is None:
        problems.append(f"{signer.algorithm}: a token with a tampered signature was accepted")
    return problems


async def timed(call: Callable[[Any], Any], items: Sequence[Any]) -> float:
    """Microseconds per call of ``call`` over ``items``, awaiting what it returns when awaitable."""
    start = time.perf_counter_ns()
    for item in items:
        outcome = call(item)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome is not None:
            raise RuntimeError(f"denied during timing: {outcome!r}")
    return (time.perf_counter_ns() - start) / len(items) / 1000


async def measure(signer: Signer, number: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    check = await jwt_check(signer.config())
    unrevocable = await jwt_check(signer.config(revocation=False))
    try:
        now = int(time.time())
        problems = await sanity(signer, check, now)
        if problems:
            raise SystemExit("\n".join(problems))
        fresh = [signer.token(now) for _ in range(warmup + number * repeats)]
        hot = signer.token(now)
        await outcome_of(check, context(hot))
        await outcome_of(unrevocable, context(hot))
        baseline = fresh[:number]
        for token in fresh[:warmup]:
            signer.pyjwt_decode(token)
            await outcome_of(check, context(token))
        results: dict[str, list[float]] = {path: [] for path in PATHS}
        for repeat in range(repeats):
            misses = [context(t) for t in fresh[warmup + repeat * number:warmup + (repeat + 1) * number]]
            hits = [context(hot) for _ in range(number)]
            results["pyjwt"].append(await timed(signer.pyjwt_decode, baseline))
            results["dsguard miss"].append(await timed(check.check, misses))
            results["dsguard hit"].append(await timed(check.check, hits))
            hits = [context(hot) for _ in range(number)]
            results["hit, no revocation"].append(await timed(unrevocable.check, hits))
        return results
    finally:
        for started in (check, unrevocable):
            shutdown = getattr(started, "shutdown", None)
            if shutdown is not None:
                await shutdown()


def report(results: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for algorithm, runs in results.items():
        base, miss, hit, bare_hit = (median(runs[path]) for path in PATHS)
        rows.append((algorithm, f"{base:.1f}", f"{miss:.1f}", f"{hit:.2f}", f"{bare_hit:.2f}",
                     f"{miss / base:.2f}x", f"{hit / base:.3f}x", f"{base / hit:.0f}x"))
    return table(("algorithm", "pyjwt decode µs", "dsguard miss µs", "dsguard hit µs", "hit, no revocation µs",
                  "miss vs pyjwt", "hit vs pyjwt", "pyjwt / hit"), rows)



def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--number", type=positive_int, default=2_000, help="calls per repeat and path")
    p.add_argument("--repeats", type=positive_int, default=5, help="repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up calls per path")
    p.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    return p.parse_args()


def main() -> int:
    args = parse_args()
    try:
        import dsguard.checks.jwt  # noqa: F401
    except ImportError as exc:
        print(f"dsguard's JWT check is not available: {exc}", file=sys.stderr)
        return 1
    print("\n".join(environment(PACKAGES)))
    print(f"\n{args.number} calls x {args.repeats} repeats per path, median; tokens signed beforehand, "
          f"{args.number * args.repeats + args.warmup} fresh ones per algorithm for the misses\n")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for algorithm in args.algorithms:
            signer = Signer(algorithm, Path(workdir))
            results[algorithm] = asyncio.run(measure(signer, args.number, args.repeats, args.warmup))
            runs = results[algorithm]
            print(f"  {algorithm:6} " + "   ".join(f"{path} {median(runs[path]):.2f} µs" for path in PATHS), flush=True)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
