"""VAE purification: reconstruct the input through a VAE before classifying it, in the spirit
of MagNet's reformer (Meng and Chen 2017, arXiv:1705.09064) and PixelDefend's "project onto
the data manifold" (Song et al. 2018, arXiv:1710.10766)."""
from __future__ import annotations

from dataclasses import dataclass

from robustbench_lite.params import value
from robustbench_lite.registry import DEFENSES

from . import _purifier


@DEFENSES.register("vae_purify", kind="purifier")
@dataclass(frozen=True, kw_only=True)
class VAEPurify(_purifier.Reconstruct):
    """x -> decoder mean at the encoder mean, D(mu(E(x))): deterministic and differentiable, so
    the adaptive attack takes full gradients through the VAE (``--mode bpda`` takes the
    identity instead).

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense vae_purify --attack pgd --eps 0.1 --mode all
    """

    model: str = value("vae-fmnist", "a trained VAE, by cache name or checkpoint folder "
                                     "(train it with ``rbl train-generative --model vae``)")
