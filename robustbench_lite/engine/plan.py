"""What an evaluation will compute, checked and keyed before any attack runs: one :class:`Plan`
holds the model, the points, the threats, the attacks, the defenses, how they are attacked, and
each cell's :class:`~robustbench_lite.cell.CellConfig`."""
from __future__ import annotations

import copy
import logging
import platform
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .. import data as data_mod
from .. import devices, fingerprint, numerics, specs
from ..attacks.base import Attack, without_early_stop
from ..cell import CellConfig, ModelId, digest, model_id
from ..data import Split
from ..defenses.base import Defense, Detector, chain
from ..inference import predict
from ..threat import Threat
from ..validation import check_int
from ..zoo import LoadedModel
from .. import conformance
from ..provenance import machine, now

from .results import state_sha256

_log = logging.getLogger(__name__)


MODES = ("adaptive", "bpda", "oblivious")


ADAPTIVE_MODES = ("adaptive", "bpda")  # the defense is in the attack's loop


@dataclass(frozen=True)
class Plan:
    """What :func:`evaluate` will compute, checked and keyed before any attack runs: everything the
    loop, the checks and the escalation read about one evaluation (:func:`~.deploy.deploy` turns it
    into the model as attacked and judged)."""

    lm: LoadedModel
    model: ModelId
    subset: Split
    threats: tuple[Threat, ...]
    attack_names: tuple[str, ...]
    attack_objs: tuple[Attack, ...]
    pre: tuple[Defense, ...]
    detector: Detector | None
    calibration: Split | None
    configs: tuple[CellConfig, ...]  # one per threat
    device: torch.device
    mode: str  # how the defenses are attacked (MODES)
    eot: int
    votes: int
    batch_size: int
    seed: int

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's own copies of the evaluation's images and labels, on the plan's device."""
        return self.subset.floats().to(self.device), self.subset.labels.clone().to(self.device)

    def provenance(self) -> dict[str, Any]:
        """What the store records beside a cell and never keys it by: where and when it ran."""
        return {"batch_size": self.batch_size, "model_source": self.lm.source, "created": now(),
                "machine": machine(self.device.type)}


def make_plan(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack], eps: Sequence[float] | float, *,
          norm: str, n: int | None, seed: int, batch_size: int, defense: Sequence[str | Defense], mode: str, eot: int,
          votes: int, calibration: Split | None, device: str | torch.device | None = None) -> Plan:
    eps_list = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not eps_list:
        raise ValueError("eps must hold at least one value")
    threats = tuple(Threat(norm, float(e)) for e in eps_list)
    attacks = specs.expand(attacks)
    attack_objs = [specs.attack(a) for a in attacks]
    if not attack_objs:
        raise ValueError("attacks must hold at least one attack")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    defenses = chain(defense)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
    check_int("evaluate", "eot", eot, 1)
    check_int("evaluate", "votes", votes, 1)
    subset = data.first(n) if n is not None else data
    lm = as_loaded(model, data.dataset)
    if lm.dataset != data.dataset:
        raise ValueError(f"model {lm.name} was built for {lm.dataset} but the data is {data.dataset}")
    dev = devices.of(lm.model) if device is None else devices.resolve(device)
    if devices.of(lm.model) != dev:
        lm.model.to(dev)
    devices.deterministic(dev)
    pre, detector = split_defenses(defenses)
    for d in pre if dev.type != "cpu" else ():
        if type(d).cpu_only:
            _log.info("defense %s runs on the CPU only: each batch goes there from %s and back", d.spec(), dev)
    random_defense = any(d.stochastic for d in pre)
    if random_defense and mode in ADAPTIVE_MODES:
        attack_objs = [without_early_stop(a) for a in attack_objs]
    attack_names = tuple(a if isinstance(a, str) else a.config()["attack"] for a in attacks)
    identity, libraries = model_id(lm)
    engine = engine_code()
    versions = dict(engine.libraries) | dict(libraries)
    methods: list[list[dict[str, Any]]] = [[], []]
    for kind, objs in ((0, attack_objs), (1, defenses)):
        for obj in objs:
            ident, libs = method_identity(obj)
            methods[kind].append(ident)
            versions |= dict(libs)
    calib = None
    calibration_id = None
    if detector is not None:
        calib = calibration if calibration is not None else data_mod.load(data.dataset, "train")
        calib = calib.last(min(detector.calibration, len(calib)))
        calibration_id = {"split": calib.split, "n": len(calib), "sha256": calib.sha256()}
    invariant = is_batch_invariant(lm.model, subset, attack_objs, pre, detector, max(threats, key=lambda t: t.eps), dev)
    common = dict(model=identity, dataset=data.dataset, split=subset.split, n=len(subset), data_sha256=subset.sha256(),
                  norm=norm, bounds=threats[0].bounds, attacks=tuple(methods[0]), defenses=tuple(methods[1]),
                  mode=mode if defenses else "none",
                  eot=eot if random_defense and mode in ADAPTIVE_MODES else 1, votes=votes if random_defense else 1,
                  calibration=calibration_id, seed=seed, batch_size=None if invariant else batch_size,
                  device=dev.type, dtype="float32", engine_sha256=engine.sha256,
                  versions={"python": platform.python_version(),
                            **dict(sorted((versions | numerics.environment(dev)).items()))})
    configs = tuple(CellConfig(eps=t.eps, **common) for t in threats)  # type: ignore[arg-type]
    return Plan(lm, identity, subset, threats, attack_names, tuple(attack_objs), pre, detector, calib, configs, dev,
                mode, eot, votes, batch_size, seed)


def as_loaded(model: LoadedModel | nn.Module, dataset: str) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or LoadedModel, got {type(model).__name__}")
    return LoadedModel(type(model).__name__, model, dataset, state_sha256(model))


def engine_code() -> fingerprint.Code:
    """The fingerprint of the engine: the package (every module of it, which its ``__init__``
    imports) and every project module they import."""
    return fingerprint.module_code(__package__)


def cell_seed(key: str, *what: Any) -> int:
    """A 60-bit seed for one use of randomness in a cell, from its ``random_key``."""
    return int(digest([key, *what])[:15], 16)


def method_identity(method: Attack | Defense | Detector) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """A method's identity in a cell's key: its config (registered name, every resolved
    hyperparameter, the weights of the models it loads) and its code's fingerprint; and the
    libraries its code calls into."""
    code = fingerprint.code_of(type(method))
    return method.config() | {"code_sha256": code.sha256}, code.libraries


#: The package whose methods' declarations the test suite checks (every method lives under it
#: since the one-namespace move); a declaration made anywhere else (a plugin, or a user's own
#: package that happens to be called ``attacks``) is tested by the engine before it is believed.
_IN_TREE = frozenset({"robustbench_lite"})


_PROBED: dict[str, bool] = {}


def is_batch_invariant(model: nn.Module, subset: Split, attacks: Sequence[Attack], pre: Sequence[Defense],
                     detector: Detector | None, threat: Threat, device: torch.device) -> bool:
    """Whether a cell's bits cannot depend on how its points are batched: every attack declares
    it (and draws from per-point streams), no defense is random (its draws follow the batches)
    or undeclared, and the model's outputs for a point do not change with its batch-mates. A
    plugin's declaration is tested on a few points first (``conformance``); one that fails keys
    its cells by the batch size."""

    if not all(a.batch_invariant for a in attacks):
        return False
    if any(d.stochastic or not type(d).batch_invariant for d in pre):
        return False
    if detector is not None and not type(detector).batch_invariant:
        return False
    k = min(len(subset), 8)
    if k < 2:
        return True
    probe = subset.first(min(len(subset), 24))
    xp, yp = probe.floats().to(device), probe.labels.clone().to(device)
    for a in attacks:
        # On a copy of the model: the code under test has not earned the engine's trust yet.
        if threat.eps > 0 and not declared_honestly(a, lambda a=a: conformance.attack_batches(a, copy.deepcopy(model), xp, yp, threat)):
            return False
    for d in pre:
        if not declared_honestly(d, lambda d=d: conformance.defense_batches(d, xp)):
            return False
    x = subset.first(k).floats().to(device)
    alone = predict(model, x, batch_size=1)
    together = predict(model, x.flip(0), batch_size=k).flip(0)
    # Float rounding differs between batch shapes; batch statistics (a train-mode norm layer, a
    # layer that normalises over the batch) move logits by orders of magnitude more.
    coupled = not torch.allclose(alone, together, rtol=1e-3, atol=1e-3 * (1 + alone.abs().max().item()))
    if coupled:
        _log.warning("the model's output for a point depends on the other points of its batch: its cells are keyed "
                     "by the batch size")
    return not coupled


def declared_honestly(method: Attack | Defense, probe: Any) -> bool:
    """Whether a method's ``batch_invariant`` declaration holds: believed for in-tree code (the test
    suite checks it), tested once per process (and per configuration) for anything else."""
    if type(method).__module__.split(".")[0] in _IN_TREE:
        return True
    key = digest(method_identity(method)[0])
    if key not in _PROBED:
        try:
            problem = probe()
        except Exception as exc:  # noqa: BLE001 - it will raise again where it runs, and be reported there
            problem = f"raised {type(exc).__name__} when its batch invariance was tested: {exc}"
        _PROBED[key] = problem is None
        if problem:
            _log.warning("%s %s; its cells are keyed by the batch size", method.config(), problem)
    return _PROBED[key]


def cell_keys(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack], eps: Sequence[float] | float, *,
              norm: str = "linf", n: int | None = None, seed: int = 0, batch_size: int = 500,
              defense: Sequence[str | Defense] = (), mode: str = "adaptive", eot: int = 20, votes: int = 10,
              calibration: Split | None = None, device: str | torch.device | None = None) -> list[str]:
    """The store keys :func:`evaluate` would give its cells, one per eps, computed without
    attacking: a scheduler skips the cells already stored (same arguments, same meaning)."""
    return [c.key for c in cell_configs(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size,
                                        defense=defense, mode=mode, eot=eot, votes=votes, calibration=calibration,
                                        device=device)]


def cell_configs(model: LoadedModel | nn.Module, data: Split, attacks: Sequence[str | Attack],
                 eps: Sequence[float] | float, *, norm: str = "linf", n: int | None = None, seed: int = 0,
                 batch_size: int = 500, defense: Sequence[str | Defense] = (), mode: str = "adaptive", eot: int = 20,
                 votes: int = 10, calibration: Split | None = None,
                 device: str | torch.device | None = None) -> list[CellConfig]:
    """The :class:`CellConfig` of each cell :func:`evaluate` would compute, one per eps."""
    plan = make_plan(model, data, attacks, eps, norm=norm, n=n, seed=seed, batch_size=batch_size, defense=defense, mode=mode,
                 eot=eot, votes=votes, calibration=calibration, device=device)
    return list(plan.configs)


def split_defenses(defenses: tuple[Defense | Detector, ...]) -> tuple[tuple[Defense, ...], Detector | None]:
    detectors = [i for i, d in enumerate(defenses) if isinstance(d, Detector)]
    if len(detectors) > 1:
        raise ValueError(f"at most one detector per evaluation, got {len(detectors)}: "
                         + ", ".join(defenses[i].spec() for i in detectors))
    if detectors and detectors[0] != len(defenses) - 1:
        raise ValueError(f"the detector {defenses[detectors[0]].spec()} must come last: it guards the preprocessed classifier")
    pre = tuple(d for d in defenses if isinstance(d, Defense))
    return pre, (defenses[detectors[0]] if detectors else None)  # type: ignore[return-value]
