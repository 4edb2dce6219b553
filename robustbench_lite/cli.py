"""The ``rbl`` command line. The only place in the package that prints."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .engine import EvalResult

from . import __version__

# lazy (every function): a command imports what it needs when it runs, so `rbl --help` and a
# mistyped argument answer at once, without importing torch.

EXIT_USAGE = 2
EXIT_CHECKS = 3  # rbl eval --strict: an evaluation whose checks failed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's exit code, our prefix
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"rbl: error: {message}\n")


def _eps(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"eps must be a number >= 0, got {text!r}") from None
    if math.isnan(v) or v < 0:
        raise argparse.ArgumentTypeError(f"eps must be a number >= 0, got {text!r}")
    return v


def _int_at_least(lo: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_count = _int_at_least(0, "an integer >= 0")
_positive_int = _int_at_least(1, "a positive integer")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rbl", description="robustbench_lite: adversarial robustness benchmarks on a CPU.")
    p.add_argument("--version", action="version", version=f"rbl {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def plugin(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="a Python file registering a defense, attack or model (repeatable); see examples/my_defense.py")

    def device(sp: argparse.ArgumentParser, default: str | None = "auto") -> None:
        sp.add_argument("--device", default=default, metavar="DEVICE",
                        help="where it computes: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps "
                             + (f"(default {default}); part of every cell's key" if default else
                                "(default: each row's own device type, as stored)"))

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", type=Path, help="results store (default $RBL_STORE or the user cache)")
        sp.add_argument("--data-dir", help="folder searched first for datasets")
        plugin(sp)

    r = sub.add_parser("run", help="train what is missing, run a benchmark profile, write reports")
    r.add_argument("--profile", default="quick", help="quick (default), full, cifar10-quick, cifar10 (L-inf 8/255) or "
                                                       "cifar10-l2 (L2 0.5)")
    r.add_argument("--out", type=Path, default=Path("reports"), help="report folder (default reports/)")
    r.add_argument("--models", nargs="+", metavar="GLOB", help="only the profile's models matching these globs")
    r.add_argument("--eps", type=_eps, nargs="+", help="evaluate at these eps instead of the profile's grid")
    r.add_argument("--zoo", type=Path, metavar="DIR",
                   help="evaluate the models of this bundle (rbl zoo export; reports/zoo is the published quick zoo) "
                        "instead of training or reading the cache; every profile model must be in it")
    r.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="where the grid's cells run: in this process (default) or as Ray tasks (pip install 'robustbench_lite[ray]')")
    r.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, else a private local Ray)")
    r.add_argument("--cpus-per-task", type=_positive_int, default=1, help="CPUs each Ray task declares and uses (default 1)")
    r.add_argument("--max-retries", type=int, default=3, help="reruns of a task whose Ray worker died (default 3)")
    device(r)
    common(r)

    t = sub.add_parser("train", help="train a zoo model")
    t.add_argument("--arch", required=True, help="architecture (rbl list models), timm:<name> or tv:<name> (at its own input size; "
                                                        "@SIDE for another, e.g. timm:resnet18@64)")
    t.add_argument("--dataset", default="fmnist")
    t.add_argument("--recipe", default="standard", help="name[:key=value,...], e.g. pgd_at:steps=20 (rbl list recipes)")
    t.add_argument("--epochs", type=_positive_int)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=_positive_int, help="default: the arch's for this recipe, else 128")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-subset", type=_positive_int, help="train on the first N training points")
    t.add_argument("--pretrained", help="local weights file to initialise a timm architecture from")
    t.add_argument("--schedule", help="learning-rate schedule: warmup_cosine or cyclic (default: the recipe's)")
    t.add_argument("--out", type=Path, help="checkpoint folder (default: the zoo cache entry)")
    t.add_argument("--no-resume", action="store_true", help="start afresh even if the folder holds a resume.pt")
    t.add_argument("--nproc", type=_positive_int, default=1,
                   help="data-parallel processes on this machine (torch DistributedDataParallel, gloo); "
                        "for several machines launch `torchrun ... -m robustbench_lite.cli train ...` instead")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default), or bf16/fp16 autocast for the forward passes (fp16 with a gradient scaler); "
                        "evaluation always runs in fp32")
    t.add_argument("--data-dir")
    device(t)
    plugin(t)

    g = sub.add_parser("train-generative", help="train a generative model (ae, dae, vae, gan) for purifiers and generator attacks")
    g.add_argument("--model", required=True, metavar="SPEC", help="kind[:key=value,...], e.g. vae:latent=16 or gan:loss=wgan-gp "
                                                                 "(rbl list generative)")
    g.add_argument("--dataset", default="fmnist")
    g.add_argument("--epochs", type=_positive_int, help="default: the model's own")
    g.add_argument("--lr", type=float, help="default: the model's own")
    g.add_argument("--batch-size", type=_positive_int, default=128)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train-subset", type=_positive_int, help="train on the first N training images")
    g.add_argument("--classifier", default="auto",
                   help="zoo model that judges reconstructions and samples (default: smallcnn-<dataset>-standard if trained; "
                        "'none' skips)")
    g.add_argument("--out", type=Path, help="checkpoint folder (default: the cache entry <kind>-<dataset>)")
    device(g)
    common(g)

    e = sub.add_parser("eval", help="evaluate a model under attacks at one or more eps")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="zoo name <arch>-<dataset>-<recipe>")
    src.add_argument("--checkpoint", help="a .safetensors (with card) or .pt state dict: a path, or https://... or "
                                          "hf-hub:org/name[/file] with --sha256")
    e.add_argument("--sha256", help="sha256 of a --checkpoint that is downloaded (checked before it is read)")
    e.add_argument("--arch", help="architecture of a --checkpoint without a model card")
    e.add_argument("--dataset", help="dataset of a --checkpoint without a model card")
    e.add_argument("--attack", action="append", required=True, metavar="SPEC",
                   help="name[:key=value,...] or a preset (strong = apgd_ce, apgd_dlr:targets=3, square:queries=3000), "
                        "repeatable; robust = correct under every attack")
    e.add_argument("--eps", type=_eps, nargs="+", required=True)
    e.add_argument("--norm", default="linf", choices=["linf", "l2"])
    e.add_argument("--n", type=_positive_int, default=1000, help="first N test points (default 1000)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=_positive_int, default=500)
    e.add_argument("--defense", action="append", default=[], metavar="SPEC",
                   help="defense name[:key=value,...] in front of the model, repeatable (applied in order); "
                        "a detector (feature_squeeze, safetynet) goes last and its rejections count as caught")
    e.add_argument("--mode", default="both", choices=["both", "all", "adaptive", "bpda", "oblivious"],
                   help="how a defended model is attacked: adaptive (full gradients where the defense is "
                        "differentiable, BPDA elsewhere, EOT over randomness), bpda (identity backward through every "
                        "defense, EOT), oblivious (the bare model); both = adaptive and oblivious (default), all = the three")
    e.add_argument("--eot", type=_positive_int, default=20, help="EOT draws per gradient on a random defense (default 20)")
    e.add_argument("--votes", type=_positive_int, default=10, help="passes voting on a random defense's label (default 10)")
    e.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_CHECKS} if a ranked (non-oblivious) result is unverified: a gradient-masking check "
                        "still fails (after escalation, unless --no-escalate)")
    e.add_argument("--no-escalate", action="store_true",
                   help="keep the raw number when a check fails (shown, never ranked) instead of climbing the "
                        "escalation ladder")
    e.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks (and escalation)")
    e.add_argument("--checks-n", type=_positive_int, default=100, help="points the checks look at (default 100, >= 10)")
    e.add_argument("--binarization", type=_count, default=20,
                   help="points of the binarization test of your attacks (default 20; 0 skips it)")
    e.add_argument("--json", action="store_true", help="one JSON object per eps")
    e.add_argument("--no-store", action="store_true", help="do not read or write the results store")
    device(e)
    common(e)

    x = sub.add_parser("experiment", help="run an experiment (universal perturbations, ...) and store its artifacts")
    x.add_argument("spec", help="name[:key=value,...], e.g. universal:xi=0.1 (rbl list experiments)")
    x.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="zoo names or checkpoint paths (.safetensors with card, or zoo folders)")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--json", action="store_true", help="one JSON object per model")
    x.add_argument("--no-store", action="store_true", help="do not write artifacts to the results store")
    device(x)
    common(x)

    lb = sub.add_parser("leaderboard", help="print or write the leaderboard from the store")
    lb.add_argument("--format", default="md",
                    help="md (default), csv, json, latex (booktabs), robustbench (model_info JSON), or html (needs --out)")
    lb.add_argument("--eps", type=_eps, default=0.1, help="headline eps (default 0.1)")
    lb.add_argument("--out", type=Path, help="write every format, the HTML site (index.html) and the figures into this folder")
    lb.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE",
                    help="add a RobustBench model_info JSON as an imported (not re-evaluated) entry, shown on the "
                         "board of its dataset, threat and eps and never ranked; repeatable")
    lb.add_argument("--threat", choices=["Linf", "L2"],
                    help="threat model of the --import files (default: their folder, as in RobustBench's "
                         "model_info/<dataset>/<threat>/)")
    lb.add_argument("--store", type=Path)

    ck = sub.add_parser("check", help="CI gate: evaluate a TOML suite and fail below its thresholds")
    ck.add_argument("suite", type=Path, help="suite file (see examples/ci-suite.toml)")
    ck.add_argument("--junit", type=Path, help="write JUnit XML here")
    ck.add_argument("--json", action="store_true", help="one JSON object per row instead of the Markdown table")
    device(ck)
    common(ck)

    cf = sub.add_parser("conformance", help="run the conformance checks on a plugin's defenses, attacks and models")
    cf.add_argument("--model", default="smallcnn-fmnist-standard",
                    help="trained zoo model or checkpoint the attacks run against (default smallcnn-fmnist-standard)")
    cf.add_argument("--n", type=_positive_int, default=64, help="test points (default 64)")
    cf.add_argument("--json", action="store_true", help="one JSON object per check")
    device(cf)
    plugin(cf)

    v = sub.add_parser("verify", help="re-run stored cells from their stored configs and compare the per-example bits")
    v.add_argument("--sample", type=_positive_int, metavar="K", help="re-run K cells chosen at random (default: all)")
    v.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    v.add_argument("--models", nargs="+", default=[], metavar="DIR",
                   help="folders searched for the weights (zoo folders or .safetensors with cards), after each "
                        "cell's own source and the zoo cache")
    v.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    device(v, default=None)
    common(v)

    z = sub.add_parser("zoo", help="export, import or fetch trained models (bundles with a sha256 manifest)")
    zs = z.add_subparsers(dest="zoo_cmd", required=True, parser_class=_Parser)
    ze = zs.add_parser("export", help="write trained models (zoo or generative) and stored artifacts into a bundle folder")
    ze.add_argument("names", nargs="*", metavar="NAME", help="zoo names (smallcnn-fmnist-standard) or generative names (vae-fmnist)")
    ze.add_argument("--profile", help="also export every model of this profile (quick, full)")
    ze.add_argument("--out", type=Path, required=True, help="new bundle folder")
    ze.add_argument("--artifacts", nargs="+", default=[], metavar="KIND",
                    help="also export the store's artifacts of these kinds (universal, advgan, ...; 'all' for every kind)")
    ze.add_argument("--store", type=Path, help="store the artifacts come from (default $RBL_STORE or the user cache)")
    zi = zs.add_parser("import", help="verify a bundle and install it: models into the cache, artifacts into the store")
    zi.add_argument("bundle", type=Path, help="bundle folder (rbl zoo export)")
    zi.add_argument("--replace", action="store_true", help="overwrite cached models of the same name that have other weights")
    zi.add_argument("--store", type=Path, help="store the artifacts go to (default $RBL_STORE or the user cache)")
    zf = zs.add_parser("fetch", help="download a file by URL or hf-hub:org/name, checked against its sha256, into the cache")
    zf.add_argument("source", help="https://... or hf-hub:org/name[/file]")
    zf.add_argument("--sha256", required=True, help="the file's sha256 (64 hex digits)")

    ls = sub.add_parser("list", help="list registered models, attacks, defenses or recipes")
    ls.add_argument("what", choices=["models", "attacks", "defenses", "recipes", "experiments", "generative"])
    ls.add_argument("--json", action="store_true")
    plugin(ls)
    return p


def _store(path: Path | None):
    from .paths import default_store
    from .store import Store

    return Store(path or default_store())


def cmd_run(args: argparse.Namespace) -> int:
    from . import executors, profiles

    profile = profiles.get(args.profile).select(models=args.models, eps=args.eps)
    executor = executors.make(args.executor, address=args.ray_address, cpus_per_task=args.cpus_per_task,
                              max_retries=args.max_retries, device=args.device)
    start = time.perf_counter()

    def stamp(text: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {text}", file=sys.stderr)

    def on_progress(progress: executors.Progress, outcome: executors.Done | executors.Failed) -> None:
        what = "done" if isinstance(outcome, executors.Done) else f"FAILED ({outcome.error})"
        stamp(f"{outcome.task.label}: {what}; cells {progress}")

    with _store(args.store) as store:
        grid = profiles.run_grid(profile, store, data_dir=args.data_dir, progress=sys.stderr.isatty(),
                                 on_model=lambda m: stamp(f"model {m}"), executor=executor, plugins=args.plugin,
                                 on_progress=on_progress, zoo_dir=args.zoo, device=args.device)
        written = profiles.write_reports(store, args.out, headline_eps=profile.headline)
    print(f"{len(grid.results)} cells in {time.perf_counter() - start:.0f}s ({args.executor} executor); wrote "
          + ", ".join(map(str, written)))
    if grid.failures:
        for f in grid.failures:
            print(f"rbl: error: {f.task.label} failed after {f.attempts} attempt(s): {f.error}", file=sys.stderr)
        print(f"rbl: error: {len(grid.failures)} task(s) failed; they are recorded in the store as failed, "
              "not as results, and a rerun retries them", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import specs
    from .train import TrainConfig, train

    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _torchrun(args.nproc, args.argv)
    recipe, recipe_kw = specs.parse(args.recipe)
    cfg = TrainConfig(arch=args.arch, dataset=args.dataset, recipe=recipe, recipe_kw=tuple(sorted(recipe_kw.items())),
                      epochs=args.epochs, lr=args.lr,
                      batch_size=args.batch_size, seed=args.seed, train_subset=args.train_subset, schedule=args.schedule,
                      precision=args.precision)
    try:
        card = train(cfg, out=args.out, data_dir=args.data_dir, pretrained=args.pretrained, progress=sys.stderr.isatty(),
                     resume=not args.no_resume, device=args.device)
    finally:
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            td.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports
    last = card.curves[-1] if card.curves else {}
    print(f"{card.name}: clean accuracy {card.clean_acc:.4f}, PGD-10 accuracy (500 test points) "
          f"{last.get('pgd_acc_test', float('nan')):.4f} after {card.train_seconds:.0f}s "
          f"(weights sha256 {card.weights_sha256[:16]}...)")
    for note in card.notes:
        print(f"note: {note}")
    return 0


def _torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``rbl train ... --nproc N``: the same command under torchrun, N processes on this machine."""
    import subprocess

    rest: list[str] = []
    skip = False
    for a in argv:
        if not skip and a != "--nproc" and not a.startswith("--nproc="):
            rest.append(a)
        skip = a == "--nproc"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "robustbench_lite.cli", *rest]
    return subprocess.run(cmd, env=env, check=False).returncode


def cmd_eval(args: argparse.Namespace) -> int:
    from . import data, specs, zoo
    from .engine import evaluate

    from .checks import CheckConfig
    from .defenses.base import chain
    from .defenses.base import Detector
    from .escalation import EscalationConfig

    checks = None if args.no_checks else CheckConfig(n=args.checks_n, binarization=args.binarization)
    attacks = [specs.attack(a) for a in specs.expand(args.attack)]  # bad specs fail before any loading
    defenses = chain(args.defense)
    modes = {"both": ["adaptive", "oblivious"], "all": ["adaptive", "bpda", "oblivious"]}.get(args.mode, [args.mode])
    if args.model:
        if args.arch or args.dataset:
            raise ValueError("--arch and --dataset only apply to --checkpoint; a zoo name already fixes them")
        lm = zoo.load(args.model)
    else:
        lm = zoo.load_checkpoint(args.checkpoint, arch=args.arch, dataset=args.dataset, sha256=args.sha256)
    split = data.load(lm.dataset, "test", data_dir=args.data_dir)
    detector = any(isinstance(d, Detector) for d in defenses)
    calibration = data.load(lm.dataset, "train", data_dir=args.data_dir) if detector else None
    store = None if args.no_store else _store(args.store)
    try:
        results = [r for mode in (modes if defenses else ["adaptive"])
                   for r in evaluate(lm, split, attacks, args.eps, norm=args.norm, n=args.n, seed=args.seed,
                                     batch_size=args.batch_size, store=store, progress=sys.stderr.isatty(),
                                     defense=defenses, mode=mode, eot=args.eot, votes=args.votes, checks=checks,
                                     calibration=calibration, escalate=None if args.no_escalate else EscalationConfig(),
                                     device=args.device)]
    finally:
        if store is not None:
            store.close()
    for r in results:
        if args.json:
            print(json.dumps(r.to_json() | {"attacks": specs.expand(args.attack)}))
        else:
            lo, hi = r.robust_acc_ci
            top5 = "n/a (early stop)" if r.robust_top5 is None else f"{r.robust_top5:.4f}"
            defended = "" if r.defense == "none" else f" + {r.defense} [{r.mode}]"
            if r.caught is not None:
                auc = "n/a" if r.detection_auc is None else f"{r.detection_auc:.3f}"
                defended += f" (caught {r.caught:.4f}, clean rejected {r.clean_rejected:.4f}, detection AUC {auc})"
            print(f"{r.model}{defended} eps={r.eps:g} ({r.norm}) n={r.n}: clean {r.clean_acc:.4f}  robust {r.robust_acc:.4f} "
                  f"[{lo:.4f}, {hi:.4f}]  top-5 {top5}  under {' + '.join(specs.expand(args.attack))}"
                  f"{' + escalation' if r.escalated_from else ''}  ({r.seconds:.1f}s)")
    # Verdicts are per model and defense mode, shared by its eps cells: print each set once.
    shown: set[tuple[str, str]] = set()
    for r in results:
        if r.checks and (r.mode, r.defense) not in shown and not args.json:
            shown.add((r.mode, r.defense))
            failed = tuple(v for v in r.checks if v.passed is False)
            label = "" if r.defense == "none" else f" [{r.mode}]"
            print(f"checks{label}: {len(failed)} of {sum(v.passed is not None for v in r.checks)} failed"
                  + "".join(f"\n  {v}" for v in failed))
    for r in results:
        if r.escalated_from and not args.json:
            print(ladder_text(r))
    if args.strict:
        bad = sorted({v.name for r in results if r.mode != "oblivious" for v in r.failed_checks})
        if bad:
            print(f"rbl: --strict: unverified: gradient-masking checks still fail: {', '.join(bad)}", file=sys.stderr)
            return EXIT_CHECKS
    return 0


def ladder_text(r: "EvalResult") -> str:
    """The escalation ladder a cell climbed: the number after each step, the checks after it."""
    label = "" if r.defense == "none" else f" [{r.mode}]"
    lines = [f"escalation{label} eps={r.eps:g} (checks failed: {', '.join(v.name for v in r.checks if v.passed is False)}):"]
    for s in r.escalation:
        if s.get("skipped"):
            lines.append(f"  {s['step']:<13} skipped: {s['view']}")
        else:
            lines.append(f"  {s['step']:<13} robust {s['robust_acc']:.4f}  (-{s['broken']} points, {s['seconds']:.1f}s) "
                         f"on {s['view']}")
    failed = r.failed_checks
    lines.append(f"  -> robust {r.robust_acc:.4f}: " + ("verified: every check passes after escalation" if not failed else
                                                      "UNVERIFIED (shown, never ranked): still failing: "
                                                      + ", ".join(v.name for v in failed)))
    lines += [f"     {v}" for v in failed]
    return "\n".join(lines)


EXIT_MISMATCH = 1  # rbl verify: a cell did not reproduce, or could not be re-run


def cmd_verify(args: argparse.Namespace) -> int:
    import dataclasses

    from . import verify
    from .paths import default_store

    path = args.store or default_store()
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results store at {path}; give one with --store")

    def show(o: verify.Outcome) -> None:
        if args.json:
            print(json.dumps(dataclasses.asdict(o)), flush=True)
        elif sys.stderr.isatty():
            print(f"{o.status:11s} {o.key[:12]} {o.label} eps={o.eps}", file=sys.stderr)

    with _store(path) as store:
        outcomes = verify.verify(store, sample=args.sample, seed=args.seed, data_dir=args.data_dir, models=args.models,
                                 on_outcome=show, device=args.device)
    if not args.json:
        sys.stdout.write(verify.table(outcomes) if outcomes else f"no cells in {path}\n")
    return 0 if all(o.ok for o in outcomes) else EXIT_MISMATCH


def cmd_train_generative(args: argparse.Namespace) -> int:
    from .generative import base as generative
    from . import specs
    from .registry import GENERATIVE

    kind, hp = specs.parse(args.model)
    GENERATIVE.get(kind)
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr!r}")
    with _store(args.store) as store:
        lg = generative.train(kind, args.dataset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              seed=args.seed, train_subset=args.train_subset,
                              classifier=None if args.classifier == "none" else args.classifier, out=args.out,
                              data_dir=args.data_dir, progress=sys.stderr.isatty(), store=store, device=args.device, **hp)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in lg.card.metrics.items()
                      if not isinstance(v, list))
    print(f"{lg.name}: {shown} after {lg.card.train_seconds:.0f}s (weights sha256 {lg.weights_sha256[:16]}...)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from . import data, specs, zoo
    from .experiments.base import execute
    from .registry import EXPERIMENTS

    experiment = specs.create(EXPERIMENTS, args.spec)  # a bad spec fails before any loading
    models = [zoo.load_any(m) for m in args.models]
    dataset = models[0].dataset
    train = data.load(dataset, "train", data_dir=args.data_dir)
    test = data.load(dataset, "test", data_dir=args.data_dir)
    store = None if args.no_store else _store(args.store)
    try:
        done = execute(experiment, models, train, test, store=store, seed=args.seed, device=args.device)
    finally:
        if store is not None:
            store.close()
    for outcome, key in done:
        if args.json:
            print(json.dumps({"model": outcome.model, "artifact": key, **outcome.metrics}))
        else:
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in outcome.metrics.items()
                              if not isinstance(v, dict))
            print(f"{outcome.model}: {shown}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from robustbench_lite.reporting import leaderboard

    from .profiles import write_reports

    from robustbench_lite.reporting import site

    formats = (*leaderboard.FORMATS, "latex", "robustbench", "html")
    if args.format not in formats:
        raise ValueError(f"unknown format {args.format!r}; allowed: {', '.join(formats)}")
    if args.format == "html" and not args.out:
        raise ValueError("--format html writes a site (index.html, one page per model, images): give it --out DIR")
    with _store(args.store) as store:
        for f in args.imports:
            print(f"imported {f} as {site.import_robustbench(store, Path(f), threat=args.threat)[:12]}", file=sys.stderr)
        if args.out:
            for path in write_reports(store, args.out, headline_eps=args.eps):
                print(path)
        elif args.format == "latex":
            sys.stdout.write(site.latex(store, args.eps))
        elif args.format == "robustbench":
            print(json.dumps(list(site.robustbench_entries(store, args.eps).values()), indent=2))
        else:
            sys.stdout.write(leaderboard.render(store, args.format, headline_eps=args.eps))
    return 0


EXIT_GATE = 1  # rbl check: a threshold or a gradient-masking check failed


def cmd_check(args: argparse.Namespace) -> int:
    import dataclasses

    from . import gate

    suite = gate.load(args.suite)
    with _store(args.store) as store:
        rows = gate.run(suite, store, data_dir=args.data_dir, progress=sys.stderr.isatty(), device=args.device)
    md = gate.publish(suite, rows, args.junit)
    if args.json:
        for r in rows:
            print(json.dumps(dataclasses.asdict(r) | {"passed": r.passed}))
    else:
        sys.stdout.write(md)
    failed = [r for r in rows if not r.passed]
    if failed:
        print(f"rbl check: {len(failed)} of {len(rows)} rows below threshold or flagged", file=sys.stderr)
    return EXIT_GATE if failed else 0


def cmd_conformance(args: argparse.Namespace) -> int:
    from . import conformance, data, zoo
    from .defenses.base import Composite
    from .registry import ATTACKS, DEFENSES, MODELS
    from .threat import Threat

    if not args.plugin:
        raise ValueError("rbl conformance needs at least one --plugin FILE")
    loaded = args.plugins_loaded
    lm = zoo.load_any(args.model)
    test = data.load(lm.dataset, "test").first(args.n).to(args.device)
    lm.model.to(args.device)
    x, y = test.floats(), test.labels
    results: list[conformance.Result] = []
    for item in loaded:
        kind, _, name = item.partition(":")
        if kind == "defense":
            obj = DEFENSES.create(name)
            for part in obj.parts() if isinstance(obj, Composite) else (obj,):
                results += conformance.check_defense(name if part is obj else f"{name} > {part.spec()}", part, x)
        elif kind == "attack":
            results += conformance.check_attack(name, ATTACKS.create(name), lm.model, x, y,
                                                (Threat("linf", 0.1), Threat("l2", 1.5)))
        elif kind == "model architecture":
            results.append(conformance.check_model(name, MODELS.get(name).obj, lm.dataset, x))
        else:
            results.append(conformance.Result(name, "registered", True, f"{kind}: no conformance checks for this kind"))
    for r in results:
        if args.json:
            print(json.dumps(conformance.as_dict(r)))
        else:
            print(f"{'ok  ' if r.passed else 'FAIL'} {r.method:40s} {r.check:14s} {r.detail}")
    failed = [r for r in results if not r.passed]
    if not args.json:
        print(f"{len(results) - len(failed)}/{len(results)} checks passed" + (f"; {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from . import bundle, fetch

    if args.zoo_cmd == "fetch":
        print(fetch.fetch(args.source, args.sha256))
        return 0
    if args.zoo_cmd == "export":
        if args.profile:
            from . import profiles

            args.names = [*args.names, *profiles.get(args.profile).models]
        if args.artifacts:
            with _store(args.store) as store:
                b = bundle.export(args.names, args.out, store=store, artifacts=args.artifacts)
        else:
            b = bundle.export(args.names, args.out)
        size = sum(f["bytes"] for f in b.manifest["files"].values())
        print(f"wrote {b.path}: {len(b.entries)} entries, {size / 1e6:.1f} MB, manifest sha256 {b.manifest['sha256'][:16]}...")
        return 0
    b = bundle.read(args.bundle)  # every file checked before anything is installed
    if any(e.kind == "artifact" for e in b.entries):
        with _store(args.store) as store:
            done = bundle.install(b, store=store, replace=args.replace)
    else:
        done = bundle.install(b, replace=args.replace)
    print(f"imported {b.path}: installed {', '.join(done['installed']) or 'nothing'}"
          + (f"; already present with the same weights: {', '.join(done['kept'])}" if done["kept"] else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import params, specs, zoo
    from .registry import ATTACKS, DEFENSES, EXPERIMENTS, GENERATIVE, MODELS, RECIPES

    reg = {"models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES, "recipes": RECIPES,
           "experiments": EXPERIMENTS, "generative": GENERATIVE}[args.what]
    items = []
    for name in reg.names():
        entry = reg.get(name)
        doc = (entry.obj.__doc__ or "").strip().splitlines()
        item = {"name": "fb:<FoolboxAttackName>" if name == "fb" and reg is ATTACKS else name,
                "summary": doc[0] if doc else ""} | {k: v for k, v in entry.meta.items() if not callable(v)}
        if isinstance(entry.obj, type) and params.params(entry.obj):
            item["hyperparameters"] = params.describe(entry.obj)
        if reg is MODELS:
            item["trained"] = [m for m in zoo.trained() if m.startswith(f"{name}-")]
        items.append(item)
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        for it in items:
            extra = f"  [trained: {', '.join(it['trained'])}]" if it.get("trained") else ""
            print(f"{it['name']:28s} {it['summary']}{extra}")
        if not items:
            print(f"(no {args.what} registered)")
    if reg is ATTACKS and not args.json:
        for name, members in specs.PRESETS.items():
            print(f"{name:28s} preset: {', '.join(members)}, as a cascade")
    return 0


def _resolve_device(args: argparse.Namespace) -> None:
    """``--device`` checked and resolved once (an unavailable one exits 2 naming what this machine
    has), and the choice printed."""
    import torch

    from . import devices

    dev = devices.resolve(args.device)
    name = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"rbl: device {dev}{name}" + (" (auto)" if args.device == "auto" else ""), file=sys.stderr)
    args.device = str(dev)


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DatasetNotFoundError
    from .errors import IntegrityError
    from .store import StoreIntegrityError
    from .generative import GenerativeNotTrainedError
    from .zoo import CheckpointError, ModelNotTrainedError

    from .plugins import load_all

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handlers = {"run": cmd_run, "train": cmd_train, "train-generative": cmd_train_generative, "eval": cmd_eval, "experiment": cmd_experiment,
                "leaderboard": cmd_leaderboard, "list": cmd_list, "conformance": cmd_conformance,
                "check": cmd_check, "verify": cmd_verify, "zoo": cmd_zoo}
    try:
        args.plugins_loaded = load_all(getattr(args, "plugin", None))
        if getattr(args, "device", None) is not None:
            _resolve_device(args)
        return handlers[args.cmd](args)
    except (ValueError, TypeError, DatasetNotFoundError, CheckpointError, ModelNotTrainedError, GenerativeNotTrainedError,
            IntegrityError, StoreIntegrityError, FileNotFoundError) as exc:
        print(f"rbl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rbl: interrupted; completed cells are in the store and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
