"""In-memory batches drawn by index from uint8 tensors that live on the training device.

No per-sample DataLoader: the whole shard is one uint8 tensor (on the GPU when there is one),
a batch is one gather, and shifting / normalising happen on the batch tensor. For training,
every rank gets the same number of batches each epoch, so DDP never waits on a short rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lstmclf.data.dataset import Split


def to_tensors(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,H,W) uint8 images and (N,) int64 labels on `device`."""
    images = torch.from_numpy(np.array(split.images, dtype=np.uint8, copy=True)).to(device)
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64)).to(device)
    return images, labels


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a (B,H,W) batch by its own random (dy, dx) in [-max_shift, max_shift], zero fill."""
    b, h, w = images.shape
    s = max_shift
    padded = torch.nn.functional.pad(images, (s, s, s, s))  # (B, H+2s, W+2s)
    offs = torch.randint(0, 2 * s + 1, (2, b), device=images.device, generator=generator)
    rows = offs[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offs[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W)


def gaussian_kernel(sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation `sigma` pixels, 2*ceil(3*sigma)+1 taps, made on
    `device` (no host-to-device copy per batch: on a GPU that waits for the queued kernels)."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def random_warp(
    images: torch.Tensor,
    max_degrees: float,
    max_scale: float,
    generator: torch.Generator,
    *,
    elastic: float = 0.0,
    elastic_sigma: float = 4.0,
) -> torch.Tensor:
    """Warp each image of a (B,H,W) float batch by its own random draw, in one bilinear resampling with
    zero fill (as the shift's): a rotation about its centre by an angle in [-max_degrees, max_degrees] and
    a scaling by a factor in [1 - max_scale, 1 + max_scale]; then, when `elastic` > 0, an elastic
    distortion (Simard et al. 2003): every pixel moves by uniform noise in [-1, 1] smoothed by a Gaussian
    of `elastic_sigma` pixels and multiplied by `elastic` (so its RMS is about
    elastic * 0.58 / (3.54 * elastic_sigma) pixels: 1.4 at 34 and 4)."""
    b, h, w = images.shape
    dev = images.device
    if max_degrees or max_scale:
        u = torch.rand((2, b), device=dev, generator=generator) * 2 - 1  # (2, B) uniform in [-1, 1)
        angle = u[0] * math.radians(max_degrees)
        scale = 1 + u[1] * max_scale
    else:
        angle, scale = torch.zeros(b, device=dev), torch.ones(b, device=dev)
    # affine_grid maps each output pixel to where it samples the input: the inverse transform, rotation by
    # -angle and scaling by 1/scale, in coordinates normalised to [-1, 1].
    cos, sin, zero = torch.cos(angle) / scale, torch.sin(angle) / scale, torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2), last dim (x, y)
    if elastic:
        noise = torch.rand((b, 2, h, w), device=dev, generator=generator) * 2 - 1  # (B, 2, H, W): dx, dy
        k = gaussian_kernel(elastic_sigma, dev)
        r = len(k) // 2
        # Separable blur, each displacement channel on its own (groups=2); zero padding at the border.
        noise = F.conv2d(noise, k.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(r, 0), groups=2)
        noise = F.conv2d(noise, k.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, r), groups=2)
        # Pixels to normalised units (align_corners=False: the image spans 2 units over w or h pixels).
        grid = grid + torch.stack([noise[:, 0] * (2.0 * elastic / w), noise[:, 1] * (2.0 * elastic / h)], -1)
    return F.grid_sample(images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


class BatchLoader:
    """Iterates (x, y) batches: x (B,1,H,W) float normalised, y (B,) int64.

    Training (`shuffle=True`): every epoch the same seeded permutation on all ranks; rank r takes
    every world_size-th index, trimmed to N // world_size, so all ranks run ceil(N/world/B) batches.
    Evaluation (`shuffle=False`): rank r takes indices r, r+world, ...: every item exactly once.
    Augmentation (training): `shift` pixels at most, then (`rotate` degrees, `scale` relative, `elastic`
    and `elastic_sigma` pixels) a random rotation, scaling and elastic distortion (`random_warp`), drawn
    per image from a generator seeded by seed, epoch and rank.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: float,
        std: float,
        shuffle: bool = False,
        shift: int = 0,
        rotate: float = 0.0,
        scale: float = 0.0,
        elastic: float = 0.0,
        elastic_sigma: float = 4.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) < world_size:
            raise ValueError(f"{len(images)} items cannot be sharded over {world_size} ranks")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.shift, self.seed = batch_size, shuffle, shift, seed
        self.rotate, self.scale, self.elastic, self.elastic_sigma = rotate, scale, elastic, elastic_sigma
        self.rank, self.world_size = rank, world_size
        self.mean, self.std = mean * 255.0, std * 255.0  # applied to raw uint8 values
        self.epoch = 0
        self.per_rank = len(images) // world_size if shuffle else len(range(rank, len(images), world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size, device=self.images.device)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # same order on every rank
        perm = torch.randperm(n, generator=g)
        return perm[self.rank :: self.world_size][: self.per_rank].to(self.images.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        gen = None
        warp = bool(self.rotate or self.scale or self.elastic)
        if self.shift or warp:
            gen = torch.Generator(device=self.images.device)
            gen.manual_seed((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank)  # own draws per rank
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            x = self.images[b]  # (B, H, W) uint8
            if self.shift:
                x = random_shift(x, self.shift, gen)
            x = x.float()
            if warp:
                x = random_warp(x, self.rotate, self.scale, gen, elastic=self.elastic, elastic_sigma=self.elastic_sigma)
            x = (x - self.mean) / self.std
            yield x.unsqueeze(1), self.labels[b]  # (B, 1, H, W)
