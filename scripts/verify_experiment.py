"""Re-run the stored runs of one experiment in a store, as `rbl verify` does, and print each outcome.

    python scripts/verify_experiment.py STORE EXPERIMENT

`rbl verify --sample` picks rows at random; this re-runs every run of one experiment (the
nonrobust one takes most of an hour on two cores), with the weights `rbl zoo import` installed.
"""
from __future__ import annotations

import sys
import time

from robustbench_lite import verify
from robustbench_lite.store import Store


def main(store_path: str, experiment: str) -> int:
    with Store(store_path) as store:
        runs = [r for r in verify._experiment_runs(store) if r[0][1].get("config", {}).get("experiment") == experiment]
        if not runs:
            print(f"no stored run of experiment {experiment!r} in {store_path}", file=sys.stderr)
            return 2
        ctx = verify._Context(store, None, [], None)
        start, ok = time.perf_counter(), True
        for run in runs:
            for o in verify._experiment(ctx, run):
                ok &= o.status == verify.IDENTICAL
                print(o.status, o.label, o.note, flush=True)
        print(f"{time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
