"""What an evaluation returns: :class:`EvalResult` (one cell), its serialisation, and :func:`combine`
(the per-example worst case of stored cells)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from torch import nn

from ..cell import digest, worst_case_config
from ..checks import Verdict
from ..stats import wilson


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """One cell: a model under a list of attacks at one eps."""

    key: str
    model: str
    arch: str
    recipe: str
    dataset: str
    defense: str
    attacks: tuple[str, ...]
    norm: str
    eps: float
    n: int
    clean_acc: float
    robust_acc: float
    robust_acc_ci: tuple[float, float]
    clean_top5: float
    robust_top5: float | None  # None when an attack stopped points at the top-1 flip (see evaluate)
    seconds: float
    seed: int
    data_sha256: str
    weights_sha256: str
    versions: dict[str, str] = field(default_factory=dict)
    mode: str = "none"  # how a defense was attacked: none (no defense), adaptive, bpda or oblivious
    checks: tuple[Verdict, ...] = ()  # gradient-masking verdicts; empty when none were run
    # With a detector: the share of the n points whose final adversarial input it rejected,
    # the share of clean points it rejected (its false-positive rate on this subset), and the
    # ROC-AUC of its score between clean inputs and adversarial ones that fool the classifier.
    caught: float | None = None
    clean_rejected: float | None = None
    detection_auc: float | None = None
    combined_from: tuple[str, ...] = ()  # a worst case's cells (combine); empty for a computed cell
    # An escalated cell (see escalation.py): the cell it escalated, each step of the ladder it climbed
    # (what ran, on which view, what it took, the robust accuracy after it), and the checks run again
    # afterwards. Its ``checks`` are the verdicts that triggered it.
    escalated_from: str = ""
    escalation: tuple[dict[str, Any], ...] = ()
    rechecks: tuple[Verdict, ...] = ()
    robust: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)
    robust_top5_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False, compare=False)

    _ARRAYS = ("robust", "robust_top5_mask")

    def to_row(self) -> dict[str, Any]:
        """A flat row for pandas, the store and the reports (per-example bits left out)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in self._ARRAYS + ("versions", "checks", "combined_from", "escalation", "rechecks")}
        row["attacks"] = "+".join(self.attacks)
        row["checks_run"] = sum(v.passed is not None for v in self.final_checks)
        row["checks_failed"] = ",".join(v.name for v in self.failed_checks)
        row["checks_failed_before"] = ",".join(v.name for v in self.checks if v.passed is False)
        row["escalation"] = "+".join(s["step"] for s in self.escalation if not s.get("skipped"))
        row["verified"] = self.verified
        row["robust_acc_ci_low"], row["robust_acc_ci_high"] = row.pop("robust_acc_ci")
        row.update({f"version_{k}": v for k, v in self.versions.items()})
        return row

    def to_record(self) -> dict[str, Any]:
        """Every field but the per-example bits, JSON-ready; :meth:`from_record` inverts it."""
        rec = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._ARRAYS}
        return rec | {"attacks": list(self.attacks), "robust_acc_ci": list(self.robust_acc_ci),
                      "checks": [v.to_dict() for v in self.checks], "combined_from": list(self.combined_from),
                      "escalation": [dict(s) for s in self.escalation], "rechecks": [v.to_dict() for v in self.rechecks]}

    @classmethod
    def from_record(cls, rec: dict[str, Any], robust: np.ndarray, robust_top5: np.ndarray) -> "EvalResult":
        return cls(**(rec | {"attacks": tuple(rec["attacks"]), "robust_acc_ci": tuple(rec["robust_acc_ci"]),
                            "checks": tuple(Verdict.from_dict(v) for v in rec.get("checks", ())),
                            "combined_from": tuple(rec.get("combined_from", ())),
                            "escalation": tuple(rec.get("escalation", ())),
                            "rechecks": tuple(Verdict.from_dict(v) for v in rec.get("rechecks", ())),
                            "robust": robust, "robust_top5_mask": robust_top5}))

    @property
    def final_checks(self) -> tuple[Verdict, ...]:
        """The verdicts that stand: after escalation where the cell was escalated, else its checks."""
        return self.rechecks if self.escalated_from else self.checks

    @property
    def failed_checks(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.final_checks if v.passed is False)

    @property
    def verified(self) -> bool | None:
        """None: no check ran; True: every check that ran passes (after escalation, if any);
        False: one still fails, and the number is shown but never ranked."""
        if not any(v.passed is not None for v in self.final_checks):
            return None
        return not self.failed_checks

    def to_json(self) -> dict[str, Any]:
        """The ``rbl eval --json`` object."""
        return {"key": self.key, "model": self.model, "weights_sha256": self.weights_sha256, "defense": self.defense, "mode": self.mode, "attacks": list(self.attacks), "norm": self.norm,
                "eps": self.eps, "n": self.n, "clean_acc": self.clean_acc, "robust_acc": self.robust_acc,
                "robust_acc_ci": list(self.robust_acc_ci), "clean_top5": self.clean_top5,
                "robust_top5": self.robust_top5, "seconds": self.seconds,
                "checks": [v.to_dict() for v in self.checks], "verified": self.verified,
                "escalation": [dict(s) for s in self.escalation], "rechecks": [v.to_dict() for v in self.rechecks]} | (
                {"caught": self.caught, "clean_rejected": self.clean_rejected, "detection_auc": self.detection_auc}
                if self.caught is not None else {})


def make_result(*, robust: np.ndarray, robust_top5_mask: np.ndarray, top5_measured: bool, **fields: Any) -> EvalResult:
    n = len(robust)
    k = int(robust.sum())
    top5 = int(robust_top5_mask.sum()) / n if top5_measured else None
    return EvalResult(n=n, robust_acc=k / n, robust_acc_ci=wilson(k, n), robust_top5=top5,
                      robust=robust, robust_top5_mask=robust_top5_mask, **fields)


def combine(results: Sequence[EvalResult]) -> EvalResult:
    """The per-example worst case of single-attack cells of one model, eps and subset.

    An example is robust only if it is robust in every cell: the same rule as running the
    attacks as one list, computed from stored bits instead of attacking again. Its key is that
    of :func:`~robustbench_lite.cell.worst_case_config` over the cells' keys.
    """
    if len(results) < 2:
        raise ValueError(f"combine needs at least two results, got {len(results)}")
    first = results[0]
    same = ("model", "weights_sha256", "dataset", "defense", "mode", "norm", "eps", "n", "data_sha256", "seed")
    for r in results[1:]:
        diff = [f for f in same if getattr(r, f) != getattr(first, f)]
        if diff:
            raise ValueError(f"cannot combine results that differ in {', '.join(diff)}")
    attacks = tuple(a for r in results for a in r.attacks)
    keys = tuple(sorted(r.key for r in results))
    return make_result(
        top5_measured=all(r.robust_top5 is not None for r in results), key=digest(worst_case_config(keys)), combined_from=keys,
        model=first.model, arch=first.arch, recipe=first.recipe, dataset=first.dataset,
        defense=first.defense, mode=first.mode, attacks=attacks, checks=next((r.checks for r in results if r.checks), ()), norm=first.norm, eps=first.eps, clean_acc=first.clean_acc,
        clean_top5=first.clean_top5, seconds=sum(r.seconds for r in results), seed=first.seed,
        data_sha256=first.data_sha256, weights_sha256=first.weights_sha256, versions=first.versions,
        robust=np.logical_and.reduce([r.robust for r in results]),
        robust_top5_mask=np.logical_and.reduce([r.robust_top5_mask for r in results]),
    )


def state_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
