#!/usr/bin/env bash
# Regenerate published reports in reports/ from scratch, each with its own results store and a
# bundle of the weights and artifacts it was computed on, so that `rbl zoo import DIR/zoo` then
# `rbl verify --store DIR/results.sqlite` re-runs it anywhere (README, "Published reports").
#
#   scripts/publish.sh quick full generative experiments robust-features   # any of them
#
# A report's models come from its shipped bundle when there is one (the weights its numbers were
# computed on), else from the zoo cache, else they are trained. Run it after any change that
# re-keys cells (the engine, a method, the numeric environment): `rbl verify` then says which.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}  # the checkout (set it to run a copy of this script)
cd "$ROOT"
RBL=${RBL:-$ROOT/.venv/bin/rbl}
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

fresh_store() {  # the report's folder emptied of everything but its weights (zoo/, twins/), and a new store
    mkdir -p "$1"
    find "$1" -mindepth 1 -maxdepth 1 ! -name zoo ! -name twins -exec rm -rf {} +
    export RBL_STORE=$1/results.sqlite
}

import_bundle() {  # the shipped weights (and artifacts, into the store) where the report has a bundle
    if [ -f "$1/zoo/manifest.json" ]; then "$RBL" zoo import "$1/zoo" --store "$RBL_STORE"; fi
}

trained() {  # a zoo model (or with -g, a generative model) whose weights are in the cache
    "$PY" - "$@" <<'PY'
import sys
from robustbench_lite import zoo
from robustbench_lite.generative import base as generative
*flag, name = sys.argv[1:]
sys.exit(0 if ((generative.checkpoint_dir(name) / "model.safetensors").is_file() if flag else zoo.is_trained(name)) else 1)
PY
}

need_models() {  # zoo models: trained where neither a bundle nor the cache has them
    for name in "$@"; do
        if ! trained "$name"; then
            IFS=- read -r arch dataset recipe <<< "$name"
            "$RBL" train --arch "$arch" --dataset "$dataset" --recipe "$recipe"
        fi
    done
}

need_generative() {  # generative models, trained into the report's store (their samples are an artifact)
    for kind in "$@"; do
        if ! trained -g "$kind-fmnist"; then
            "$RBL" train-generative --model "$kind"
        fi
    done
}

ship() {  # the report's bundle (DIR/zoo), replaced only once the new one is written: ship DIR EXPORT-ARGS...
    local dir=$1; shift
    rm -rf "$WORK/zoo"
    "$RBL" zoo export "$@" --out "$WORK/zoo" && rm -rf "$dir/zoo" && mv "$WORK/zoo" "$dir/zoo"
}

publish_quick() {  # the profile's models: the shipped bundle's, else the cache's, else trained; then shipped
    local models
    say quick
    rm -f reports/results.sqlite reports/results.sqlite-*
    export RBL_STORE=$ROOT/reports/results.sqlite
    import_bundle "$ROOT/reports"
    read -r -a models <<< "$("$PY" -c 'from robustbench_lite import profiles; print(*profiles.get("quick").models)')"
    need_models "${models[@]}"
    ship "$ROOT/reports" --profile quick
    "$RBL" run --profile quick --zoo reports/zoo --out reports
}

publish_full() {
    local dir=$ROOT/reports/full-eps0.1 models=(smallcnn-fmnist-standard smallcnn-fmnist-fast_at smallcnn-fmnist-pgd_at smallcnn-fmnist-trades)
    say full
    fresh_store "$dir"; import_bundle "$dir"; need_models "${models[@]}"
    "$RBL" run --profile full --models "${models[@]}" --eps 0.1 --out "$dir"
    ship "$dir" "${models[@]}"
}

publish_generative() {
    local dir=$ROOT/reports/generative-eps0.1
    say generative
    fresh_store "$dir"; import_bundle "$dir"
    need_models smallcnn-fmnist-standard smallcnn-fmnist-pgd_at
    need_generative dae vae gan
    (cd "$WORK" && for part in purify dgan gen; do "$PY" "$ROOT/scripts/adaptive_acceptance.py" "$part"; done)
    "$RBL" leaderboard --out "$dir"
    ship "$dir" smallcnn-fmnist-standard smallcnn-fmnist-pgd_at dae-fmnist vae-fmnist gan-fmnist --artifacts all --store "$RBL_STORE"
}

publish_experiments() {
    local dir=$ROOT/reports/experiments
    say experiments
    fresh_store "$dir"; import_bundle "$dir"; import_bundle "$ROOT/reports/generative-eps0.1"
    need_models smallcnn-fmnist-standard test_resnet-fmnist-standard smallcnn-fmnist-pgd_at
    need_generative vae  # the latent experiment's
    "$RBL" experiment universal --models smallcnn-fmnist-standard
    "$RBL" experiment universal:method=sgd --models smallcnn-fmnist-standard test_resnet-fmnist-standard smallcnn-fmnist-pgd_at
    "$RBL" experiment fooling:method=evolution --models smallcnn-fmnist-standard
    "$RBL" experiment min_norm:methods=deepfool+lbfgs+fb_deepfool+fb_cw,n=100 --models smallcnn-fmnist-standard
    "$RBL" experiment transforms:eps=0.1 --models smallcnn-fmnist-standard
    "$RBL" experiment latent --models smallcnn-fmnist-standard
    "$RBL" leaderboard --out "$dir"
    ship "$dir" smallcnn-fmnist-standard test_resnet-fmnist-standard smallcnn-fmnist-pgd_at vae-fmnist --artifacts all --store "$RBL_STORE"
}

publish_robust_features() {
    local dir=$ROOT/reports/robust-features-eps0.1
    say robust-features
    fresh_store "$dir"; import_bundle "$dir"; import_bundle "$ROOT/reports/full-eps0.1"  # the board's classifiers
    need_models smallcnn-fmnist-standard smallcnn-fmnist-pgd_at
    # The denoising twins: the same 10-epoch pgd_at budget, with and without the block.
    for arch in smallcnn_denoise smallcnn; do
        local out=reports/robust-features-eps0.1/twins/$arch  # relative: the cells name it as their source
        if [ ! -f "$out/model.safetensors" ]; then "$RBL" train --arch "$arch" --recipe pgd_at --epochs 10 --out "$out"; fi
        "$RBL" eval --checkpoint "$out" --attack pgd:steps=50 --attack apgd_ce --attack apgd_dlr --attack square --eps 0.1 --n 1000
    done
    "$RBL" experiment feature_maps --models reports/robust-features-eps0.1/twins/smallcnn_denoise
    "$RBL" experiment nonrobust:eval_n=10000 --models smallcnn-fmnist-standard smallcnn-fmnist-pgd_at
    "$RBL" leaderboard --out "$dir"
    ship "$dir" smallcnn-fmnist-standard smallcnn-fmnist-pgd_at --artifacts all --store "$RBL_STORE"
}

[ $# -gt 0 ] || { sed -n 2,10p "$0"; exit 2; }
for report in "$@"; do  # every name checked before the first report is touched
    case $report in
        quick|full|generative|experiments|robust-features) ;;
        *) echo "unknown report '$report': one of quick, full, generative, experiments, robust-features" >&2; exit 2 ;;
    esac
done
for report in "$@"; do "publish_${report//-/_}"; done
