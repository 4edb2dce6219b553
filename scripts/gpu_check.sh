#!/usr/bin/env bash
# The GPU check (issue 20): what a machine with a CUDA GPU runs as is, in about 5 minutes, after
# `make setup` (or with PY= and RBL= pointing at an installed environment). It prints
#   1. the devices torch sees;
#   2. the device-parametrized tests on CUDA (the conformance suites of attacks and defenses,
#      the engine, training at each precision, generative training and an experiment);
#   3. the quick profile on CUDA from the shipped zoo, into its own store and report folder;
#   4. a timing table: the same evaluations on the CPU and on CUDA, as ratios (CPU / CUDA).
# Output goes to stdout and, with OUT set, into $OUT (the quick report's store and tables).
#
#   scripts/gpu_check.sh            # exits 2 when torch sees no CUDA device
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
RBL=${RBL:-$ROOT/.venv/bin/rbl}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RBL_CACHE_DIR=${RBL_CACHE_DIR:-$OUT/cache}
say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

say devices
"$PY" - <<'PY' || exit 2
import sys, torch
from robustbench_lite import devices
print("torch", torch.__version__, "cuda", torch.version.cuda, "| this machine has:", devices.found())
sys.exit(0 if torch.cuda.is_available() else 2)
PY
command -v nvidia-smi >/dev/null && nvidia-smi -L

say "device-parametrized tests on CUDA"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_devices.py tests/test_attack_conformance.py tests/test_defenses.py 2>&1 | tail -25
tests=${PIPESTATUS[0]}

say "quick profile on CUDA (shipped zoo)"
"$RBL" zoo import reports/zoo >/dev/null
timeout 150 "$RBL" run --profile quick --zoo reports/zoo --device cuda --store "$OUT/quick-cuda.sqlite" --out "$OUT/quick-cuda" \
    2>&1 | tail -4
quick=${PIPESTATUS[0]}
[ -f "$OUT/quick-cuda/leaderboard.md" ] && head -20 "$OUT/quick-cuda/leaderboard.md"

say "timing: CPU against CUDA (same cells, seconds from the engine, ratio CPU / CUDA)"
"$PY" - <<'PY'
import time, torch
from robustbench_lite import data, zoo
from robustbench_lite.engine import evaluate
test = data.load("fmnist", "test")
rows = []
for name in ("smallcnn-fmnist-standard", "test_resnet-fmnist-standard"):
    for attack, n in (("pgd:steps=20", 1000), ("square:queries=200", 500)):
        took = {}
        for dev in ("cpu", "cuda"):
            lm = zoo.load(name)
            evaluate(lm, test, [attack], [0.1], n=64, checks=None, escalate=None, device=dev)  # warm-up
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            r = evaluate(lm, test, [attack], [0.1], n=n, seed=1, checks=None, escalate=None, device=dev)[0]
            if dev == "cuda":
                torch.cuda.synchronize()
            took[dev] = (time.perf_counter() - t, r.robust_acc)
        rows.append((name, attack, n, took))
print("| model | attack | n | robust cpu | robust cuda | CPU / CUDA time |")
print("|---|---|---:|---:|---:|---:|")
for name, attack, n, t in rows:
    print(f"| {name} | {attack} | {n} | {t['cpu'][1]:.3f} | {t['cuda'][1]:.3f} | {t['cpu'][0] / t['cuda'][0]:.1f}x |")
PY
say "done: tests rc=$tests, quick profile rc=$quick"
exit $(( tests != 0 || quick != 0 ))
