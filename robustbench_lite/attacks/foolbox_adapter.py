"""Run any foolbox attack in the harness: "Foolbox Native", Rauber et al., 2020, JOSS 5(53):2607.

Foolbox is also the independent reference our FGSM and PGD are cross-checked against.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass
from typing import Any

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack
from robustbench_lite.params import value
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


def _foolbox_attacks() -> dict[str, type]:
    import foolbox as fb

    return {n: c for n, c in vars(fb.attacks).items()
            if isinstance(c, type) and issubclass(c, fb.attacks.base.Attack) and not n.startswith("_")
            and not getattr(c, "__abstractmethods__", None)}


class _Detached(nn.Module):
    """Calls ``model`` with detached parameters: foolbox backpropagates through the whole
    graph, and the caller's ``.grad`` fields must stay untouched."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]  # a list, so the model is not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self._model[0]
        state = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
        return torch.func.functional_call(model, state, (x,))


@ATTACKS.register("fb", example={"attack": "LinfPGD", "options": (("abs_stepsize", 0.025), ("steps", 10))})
@dataclass(frozen=True, kw_only=True)
class FoolboxAttack(Attack):
    """Adapter: ``fb:<FoolboxAttackName>[:key=value,...]`` on the command line.

    Foolbox's attack gets the model wrapped as ``fb.PyTorchModel`` with the threat's bounds
    and ``epsilons=eps``, so minimum-norm attacks (DeepFool, C&W) come back clipped to the
    budget; the engine still checks and projects the result like any other attack. ``attack``
    is required.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = FoolboxAttack(attack="LinfPGD", options=(("steps", 20),))(model, x, y, Threat("linf", 0.1))
    """

    attack: str = value(MISSING, "a class name in foolbox.attacks (e.g. LinfPGD, L2DeepFoolAttack); required",
                        allowed="a foolbox attack class name")
    options: tuple[tuple[str, Any], ...] = value((), "constructor keyword arguments, as (key, value) pairs")

    def validate(self, method: str) -> None:
        known = _foolbox_attacks()
        if self.attack not in known:
            close = difflib.get_close_matches(self.attack, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown foolbox attack {self.attack!r}{hint} Allowed: {', '.join(sorted(known))}")
        try:
            self._build()
        except TypeError as exc:
            raise ValueError(f"{method}:{self.attack}: bad options {dict(self.options)}: {exc}") from exc

    def _build(self) -> Any:
        return _foolbox_attacks()[self.attack](**dict(self.options))

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        import foolbox as fb

        atk = self._build()
        p = getattr(getattr(atk, "distance", None), "p", None)
        want = math.inf if threat.norm == "linf" else 2
        if p is not None and p != want:
            raise ValueError(f"fb:{self.attack} works in the L{p} norm but the threat is {threat.norm}")
        if getattr(model, "rejects", False):
            # Foolbox would count landing in the reject column as a success.
            raise ValueError(f"fb:{self.attack} cannot attack a classifier and its detector jointly; "
                             "use a native attack (pgd, apgd_ce, apgd_dlr, square, ...)")
        fmodel = fb.PyTorchModel(_Detached(model).train(model.training), bounds=threat.bounds, device=x.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                 device=generator.device if generator is not None else None))
        # Foolbox draws from torch's global generator; fork it so the caller's stream is untouched.
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            _, clipped, _ = atk(fmodel, x, y, epsilons=threat.eps)
        return clipped.to(x.dtype)
