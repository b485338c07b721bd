"""WAF detection and false positives on the CRS evaluation corpus (../shared/eval/crs).

For each attack family and paranoia level N: of the records the real CRS blocks at PL <= N
(``crs_block_at_pl``), the share dsguard's WAF blocks; for each benign set, the share blocked
(false positives). Run for dsguard's built-in rules and, where a CRS rules directory is found,
for that directory loaded through dsguard's SecLang engine.

    python benchmarks/waf_eval.py                          # built-in + /usr/share/modsecurity-crs if present
    python benchmarks/waf_eval.py --crs PATH --paranoia 1  # another CRS checkout
    python benchmarks/waf_eval.py --misses sqli            # list the records missed (ids only)
    python benchmarks/waf_eval.py --halves                 # also per half: even / odd test numbers

The halves split the CRS records by the parity of their test number (``942100-7`` is odd): rules
written against one half can be checked on the other. Tests of one rule with neighbouring
numbers often share a payload in other placements, so the halves are not independent samples.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import environment, table
from waf_corpus import BENIGN, CORPUS, FAMILIES, blocked_by_crs, collections_of, records

from dsguard.waf import RuleSet, builtin_rule_set, crs_rule_set
from dsguard.waf.seclang import DEBIAN_CRS


def _half(record_id: str) -> int:
    number = record_id.split("-")[1]
    return int(number) % 2 if number.isdigit() else 0


def _share(caught: int, total: int) -> str:
    return f"{caught}/{total} {100.0 * caught / total if total else 0.0:.1f}%"


def evaluate(rule_set: RuleSet, paranoia: int, corpus: Path, misses: str | None,
             halves: bool = False) -> tuple[list[list[Any]], int]:
    engine = rule_set.engine(paranoia)
    rows: list[list[Any]] = []
    worst = 100.0
    for family in (*FAMILIES, *BENIGN):
        benign = family in BENIGN
        total = [0, 0]
        caught = [0, 0]
        missed: list[str] = []
        for record in records(family, corpus):
            if not benign and not blocked_by_crs(record, paranoia):
                continue
            half = 0 if benign else _half(record["id"])
            total[half] += 1
            blocked = engine.inspect(collections_of(record)).blocked
            caught[half] += blocked
            if blocked == benign:
                missed.append(record["id"])
        share = 100.0 * sum(caught) / sum(total) if sum(total) else 0.0
        row = [family, "false positives" if benign else "detected", f"{sum(caught)}/{sum(total)}", f"{share:.1f}%"]
        if halves:
            row += ["", ""] if benign else [_share(caught[0], total[0]), _share(caught[1], total[1])]
        rows.append(row)
        if not benign:
            worst = min(worst, share)
        if misses == family:
            print(f"{family} at PL{paranoia}: {' '.join(missed)}")
    return rows, int(worst)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--crs", type=Path, default=DEBIAN_CRS if DEBIAN_CRS.is_dir() else None,
                        help="CRS rules directory (default: Debian's, when installed)")
    parser.add_argument("--builtin-only", action="store_true")
    parser.add_argument("--paranoia", type=int, action="append", choices=(1, 2, 3, 4))
    parser.add_argument("--misses", choices=(*FAMILIES, *BENIGN), help="print the ids of missed/flagged records")
    parser.add_argument("--halves", action="store_true", help="add detection on even and odd test numbers")
    args = parser.parse_args(argv)
    if not args.corpus.is_dir():
        print(f"corpus not found at {args.corpus}", file=sys.stderr)
        return 2
    sets: list[tuple[str, RuleSet]] = [("built-in rules", builtin_rule_set())]
    if args.crs is not None and not args.builtin_only:
        crs = crs_rule_set(args.crs)
        sets.append((f"CRS from {args.crs}", crs))
        print(f"CRS load: {crs.report.summary() if crs.report else ''}")
    print("\n".join(environment(["google-re2"])))
    for paranoia in args.paranoia or [1, 2]:
        for name, rule_set in sets:
            start = time.perf_counter()
            rows, _ = evaluate(rule_set, paranoia, args.corpus, args.misses, args.halves)
            print(f"\n### {name}, paranoia {paranoia} (share of what CRS blocks at PL<={paranoia}; "
                  f"{time.perf_counter() - start:.1f} s)\n")
            print(table(["set", "measure", "count", "share", *(["even half", "odd half"] if args.halves else [])],
                        rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
