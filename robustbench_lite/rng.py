"""Per-point random streams: what makes a cell's result independent of how its points are batched.

A ``torch.Generator`` hands out numbers in call order, so the noise a point gets depends on
which other points share its batch, on the batch size and on the points an earlier attack of
the cascade already took. :class:`PointStreams` instead gives every point its own stream: the
numbers row ``i`` receives depend only on that point's key (derived by the engine from the
cell's seed, the attack's position and the point's index in the evaluation subset) and on the
draw's position in the attack's own sequence of draws. Chunking, batch size and the order of
cells then cannot change a result, which is why such attacks' cells leave the batch size out
of their key (engine, ``CellConfig.batch_size``).

The numbers come from a counter-based hash (murmur3's 32-bit finaliser, chained over key,
counter and element index) computed with tensor operations on the points' device, so a draw
for many points is one vectorised call and no CPU tensor is made on the way.

The rule for an attack that uses streams: the sequence of draws must not depend on the data
except by stopping early. Where a loop can stop early and more draws follow it (restarts, a
target loop), each round takes a :meth:`PointStreams.child` of its own.
"""
from __future__ import annotations

from typing import Sequence

import torch

_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2**32 for a in [0, 2**32), without int64 overflow on any device."""
    lo = (a & 0xFFFF) * c
    hi = ((a >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & _MASK


def _fmix(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser: every input bit flips about half the output bits."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def mix(*words: int | torch.Tensor) -> torch.Tensor:
    """A 32-bit hash (in int64) of integers and integer tensors, broadcast together."""
    device = next((w.device for w in words if isinstance(w, torch.Tensor)), None)
    h = torch.zeros((), dtype=torch.int64, device=device)
    for w in words:
        w = torch.as_tensor(w, dtype=torch.int64, device=device) & _MASK
        h = _fmix(h ^ w ^ _GOLDEN)
    return h


class PointStreams:
    """One random stream per point.

    Args:
        keys: int64 tensor (N,), one key per point; equal keys give equal streams.

    Views made by indexing (``streams[idx]``) share the draw counter of the streams they come
    from, so rows keep their numbers whichever subset of points takes part in a draw.
    """

    def __init__(self, keys: torch.Tensor, _counter: list[int] | None = None):
        if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or keys.ndim != 1:
            raise TypeError(f"keys must be an int64 tensor of shape (N,), got {getattr(keys, 'dtype', type(keys))} "
                            f"{tuple(getattr(keys, 'shape', ()))}")
        self.keys = keys & _MASK
        self._counter = [0] if _counter is None else _counter

    @classmethod
    def for_points(cls, seed: int, index: torch.Tensor) -> "PointStreams":
        """Streams for the points at ``index`` (positions in the evaluation subset) under ``seed``."""
        return cls(mix(seed & _MASK, (seed >> 32) & _MASK, index.to(torch.int64)))

    @classmethod
    def of(cls, generator: "torch.Generator | PointStreams | None", n: int, device: torch.device | str) -> "PointStreams":
        """Streams for a batch of ``n`` points: the engine's own, or keys drawn from a plain generator
        (a direct caller's; its numbers then follow that generator as before)."""
        if isinstance(generator, PointStreams):
            if len(generator) != n:
                raise ValueError(f"the random streams cover {len(generator)} points but the batch has {n}")
            return generator
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, PointStreams or None, got {type(generator).__name__}")
        keys = torch.randint(0, 2**31 - 1, (n,), generator=generator, dtype=torch.int64,
                             device=generator.device if generator is not None else None)
        return cls(keys.to(device))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def __getitem__(self, index: torch.Tensor | slice) -> "PointStreams":
        return PointStreams(self.keys[index], self._counter)

    def child(self, *tags: int) -> "PointStreams":
        """Independent streams for one round of a loop that may stop early (a restart, a target):
        a fresh counter, keys mixed with ``tags``."""
        return PointStreams(mix(self.keys, *tags))

    def seed(self) -> int:
        """One integer from the streams (and a draw), for code that needs a plain generator."""
        return int(self.bits(()).sum().item()) & 0x7FFFFFFF if len(self) else 0

    def bits(self, shape: Sequence[int]) -> torch.Tensor:
        """Uniform 32-bit integers (in int64), shape (N, *shape): one draw."""
        c = self._counter[0]
        self._counter[0] += 1
        numel = 1
        for s in shape:
            numel *= int(s)
        j = torch.arange(numel, device=self.keys.device, dtype=torch.int64)
        h = mix(self.keys[:, None], c, j[None, :])
        return h.view(len(self), *shape)

    def random(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform in [0, 1), shape (N, *shape)."""
        if dtype == torch.float64:
            hi, lo = self.bits(shape), self.bits(shape)
            return ((hi >> 6) * 134217728.0 + (lo >> 5)).to(dtype) / 9007199254740992.0
        return (self.bits(shape) >> 8).to(dtype) / 16777216.0

    def randint(self, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
        """Uniform integers in [low, high), int64, shape (N, *shape)."""
        if high <= low:
            raise ValueError(f"randint needs low < high, got [{low}, {high})")
        # 32 bits folded onto a small range: the bias is below (high - low) / 2**32.
        return low + self.bits(shape) % (high - low)

    def normal(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal (Box-Muller), shape (N, *shape)."""
        u1 = self.random(shape, torch.float64).clamp_min(1e-300)
        u2 = self.random(shape, torch.float64)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).to(dtype)


def as_generator(generator: "torch.Generator | PointStreams | None") -> torch.Generator | None:
    """A plain generator for code written against ``torch.Generator``: a PointStreams is turned into
    one seeded from its keys (its draws then depend on the batch, which is why such code declares
    itself not batch-invariant)."""
    if isinstance(generator, PointStreams):
        return torch.Generator(device=generator.keys.device).manual_seed(generator.seed())
    return generator
