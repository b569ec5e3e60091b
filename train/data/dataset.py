"""The pretraining data set: images -> multi-crop views with boxes, deterministic per sample.

Randomness never comes from global state: every sample's augmentation is drawn from a generator
seeded by ``(run seed, global sample position)``. A resumed run therefore sees exactly the views a
straight run would, whatever the number of ranks or data-loader workers.

Per-view fields beyond boxes and flips (iBOT masks, positional masks, rotations, transformation
parameters, reconstruction targets) are added by *sample hooks*, run in the workers after the views
are made. Each hook draws from its own generator, seeded by ``(sample seed, hook name)``, so turning
one on does not change the views or the other hooks' draws.
"""

from __future__ import annotations

import logging
import zlib
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from wherevit.base.image import ImageDecodeError
from wherevit.train.data.sources import DataError, ImageSource
from wherevit.train.data.views import ViewSpec, make_view

__all__ = ["ViewGroup", "ViewSampler", "SampleHook", "MultiCrop", "SSLDataset", "StepBatchSampler", "hook_rng"]

log = logging.getLogger(__name__)

# {"images": (V,3,S,S) uint8, "boxes": (V,4) float32, "flips": (V,) bool, + any per-view field (V, ...)}
ViewGroup = dict
ViewSampler = Callable[[np.ndarray, np.random.Generator], Mapping[str, ViewGroup]]


class SampleHook(Protocol):
    """Adds fields to one sample in a data worker; picklable (workers get a copy).

    ``sample`` maps view-group names to ``ViewGroup`` dicts (``global``, ``local``, plug-in groups);
    a hook may add per-view arrays to a group (leading dimension V, e.g. ``sample["global"]["masks"]``),
    add a new top-level entry (a dict of arrays, e.g. ``sample["posfield"] = {"affine": ...}``), or
    transform a group's images in place. ``img`` is the original HWC uint8 image. ``position`` is
    the sample's global position (``StepBatchSampler``), for batch-level stratification; None when
    the data set is indexed without one. Every sample must get the same keys and shapes (collation).
    """

    def __call__(self, sample: dict, img: np.ndarray, rng: np.random.Generator, position: int | None) -> None: ...


def hook_rng(sample_seed: int, name: str) -> np.random.Generator:
    """The generator hook ``name`` draws from for the sample seeded ``sample_seed``."""
    return np.random.default_rng([sample_seed, zlib.crc32(name.encode())])


def stack_views(views: list[tuple[np.ndarray, np.ndarray, bool]]) -> ViewGroup:
    """Stack ``make_view`` results into one view group."""
    return {
        "images": np.stack([v[0] for v in views]),
        "boxes": np.stack([v[1] for v in views]).astype(np.float32),
        "flips": np.array([v[2] for v in views], dtype=bool),
    }


class MultiCrop:
    """DINO multi-crop (``global`` and ``local`` groups) plus the views plug-ins ask for."""

    def __init__(self, global_spec: ViewSpec, n_global: int, local_spec: ViewSpec, n_local: int,
                 extra: Mapping[str, ViewSampler] | None = None):
        self.global_spec, self.n_global = global_spec, n_global
        self.local_spec, self.n_local = local_spec, n_local
        self.extra = dict(extra or {})

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict[str, ViewGroup]:
        out = {"global": stack_views([make_view(img, self.global_spec, rng) for _ in range(self.n_global)])}
        if self.n_local > 0:
            out["local"] = stack_views([make_view(img, self.local_spec, rng) for _ in range(self.n_local)])
        for name, sampler in self.extra.items():
            for group, views in sampler(img, rng).items():
                if group in out:
                    raise ValueError(f"plug-in view sampler {name!r} produced group {group!r}, which already exists")
                out[group] = views
        return out


class SSLDataset:
    """Map-style data set indexed by ``(image index, sample seed, global position)`` keys from
    ``StepBatchSampler`` (``(image index, sample seed)`` also works: hooks then get no position).

    An unreadable image is skipped (the next image is used instead) and reported in the sample's
    ``skipped`` field, so a bad file costs one warning, not a crashed run. ``hooks`` run in order
    after the views are made (see ``SampleHook``).
    """

    max_consecutive_failures = 50

    def __init__(self, source: ImageSource, transform: MultiCrop, hooks: Mapping[str, SampleHook] | None = None):
        self.source, self.transform = source, transform
        self.hooks = dict(hooks or {})

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        index, sample_seed = key[0], key[1]
        position = key[2] if len(key) > 2 else None
        skipped = []
        for attempt in range(self.max_consecutive_failures):
            i = (index + attempt) % len(self.source)
            try:
                img = self.source.load(i)
                break
            except ImageDecodeError as e:
                skipped.append(str(e))
        else:
            raise DataError(
                f"{self.max_consecutive_failures} consecutive images could not be decoded "
                f"(last: {skipped[-1]}); is {self.source.describe()} really an image data set?"
            )
        rng = np.random.default_rng(sample_seed)
        sample = self.transform(img, rng)
        for name, hook in self.hooks.items():
            hook(sample, img, hook_rng(sample_seed, name), position)
        sample["skipped"] = "\n".join(skipped)
        return sample


class StepBatchSampler:
    """Infinite batch sampler addressed by global step.

    Step ``s`` covers global sample positions ``s*B .. s*B+B-1``; position ``p`` maps to image
    ``perm_e[p % n]`` with ``perm_e`` a permutation seeded by ``(seed, epoch = p // n)``. Rank ``r``
    of ``world`` takes a contiguous ``B / world`` slice. Each item is ``(image, seed, position)``: a
    per-position seed for the augmentations and the global position itself. Starting at ``start_step`` replays nothing and skips nothing.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0):
        if global_batch % world:
            raise ValueError(f"global batch size {global_batch} is not divisible by world size {world}")
        self.n, self.B, self.seed = n, global_batch, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch_for_step(self, step: int) -> list[tuple[int, int, int]]:
        per = self.B // self.world
        first = step * self.B + self.rank * per
        out = []
        for p in range(first, first + per):
            epoch, pos = divmod(p, self.n)
            seed = int(np.random.SeedSequence([self.seed, 7919, p]).generate_state(1)[0])
            out.append((int(self._perm_for(epoch)[pos]), seed, p))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start_step
        while True:
            yield self.batch_for_step(step)
            step += 1
