"""JPEG compression: "Countering Adversarial Images using Input Transformations",
Guo et al., 2018, arXiv:1711.00117 (after Dziugaite et al., 2016, arXiv:1608.00853)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from robustbench_lite.params import integer
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("jpeg")
@dataclass(frozen=True, kw_only=True)
class JPEG(Defense):
    """Encode each image as a real JPEG at ``quality`` and decode it again (libjpeg through
    Pillow; torchvision 0.29 deprecates its own codec): quantisation to 8 bits and of the DCT coefficients, so no gradient exists
    and the step is attacked with BPDA (identity backward, Athalye 2018).

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense jpeg:quality=75 --attack pgd --eps 0.1
    """

    differentiable = False
    batch_invariant = True
    cpu_only = True  # Pillow's codec: each batch goes to the CPU and back

    quality: int = integer(75, "JPEG quality (75: Guo 2018)", lo=1, hi=100)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        pixels = (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = np.empty_like(pixels)
        for i, image in enumerate(pixels):  # the codec works one image at a time
            buf = io.BytesIO()
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "JPEG", quality=self.quality)
            out[i] = np.asarray(Image.open(buf)).reshape(image.shape)
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255
