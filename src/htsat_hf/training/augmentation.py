"""Mixup of the original AudioSet recipe.

The original mixes the log-mel features inside the model, after the BatchNorm over mel bins and SpecAugment:
`x_i <- lam_i * x_i + (1 - lam_i) * x_{B-1-i}`, with one `lam_i ~ Beta(0.5, 0.5)` per example and the batch reversed as
partner. It does not mix the targets: each mixed example keeps its own multi-hot target (a known quirk; its authors
comment that on noisy AudioSet labels this works as "adding noise" rather than a mix). Standard mixup also mixes the
targets with the same weights; [`mix`] does either.

[`sample_mixup`] draws the per-example weights and partners, [`mix`] applies them to a batch; the model applies
them at the original's place in its forward.
"""

from typing import Literal

import numpy as np
import torch

PARTNERS = ("reverse", "random")


def sample_mixup(
    batch_size: int,
    alpha: float = 0.5,
    generator: np.random.Generator | None = None,
    partner: Literal["reverse", "random"] = "reverse",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup weights and partners for one batch.

    Args:
        batch_size: examples in the batch.
        alpha: both parameters of the Beta distribution of the weights (0.5 in the original).
        generator: numpy random generator; `None` uses numpy's global random state, as the original does (seeded
            by `transformers.set_seed`).
        partner: `"reverse"` mixes example `i` with example `batch_size - 1 - i` (the original; with an odd batch the
            middle example is mixed with itself, i.e. left unchanged); `"random"` uses a random permutation.
        device: where to put the returned tensors.

    Returns:
        `lam`: `(batch_size,)` float32 weight of each example itself, in [0, 1];
        `index`: `(batch_size,)` int64 index of each example's partner.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if partner not in PARTNERS:
        raise ValueError(f"partner must be one of {PARTNERS}, got {partner!r}")
    rng = np.random if generator is None else generator
    lam = torch.from_numpy(np.asarray(rng.beta(alpha, alpha, size=batch_size), dtype=np.float32))
    if partner == "reverse":
        index = torch.arange(batch_size - 1, -1, -1)
    else:
        index = torch.from_numpy(np.asarray(rng.permutation(batch_size), dtype=np.int64))
    return lam.to(device), index.to(device)


def mix(
    features: torch.Tensor,
    lam: torch.Tensor,
    index: torch.Tensor,
    targets: torch.Tensor | None = None,
    mix_targets: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mix every example with its partner: `out[i] = lam[i] * x[i] + (1 - lam[i]) * x[index[i]]`.

    Args:
        features: `(batch, frames, mel_bins)` normalised log-mel features (any `(batch, ...)` shape works).
        lam: `(batch,)` weights from [`sample_mixup`].
        index: `(batch,)` partner indices from [`sample_mixup`].
        targets: `(batch, num_labels)` multi-hot or soft targets, or `None`.
        mix_targets: mix `targets` with the same weights (standard mixup). `False` (the original) returns them
            unchanged.

    Returns:
        The mixed features, same shape and dtype as `features`, and the targets: mixed `(batch, num_labels)` floats
        with `mix_targets`, otherwise `targets` as given.
    """
    batch = features.shape[0]
    if lam.shape != (batch,) or index.shape != (batch,):
        raise ValueError(
            f"lam and index must have shape ({batch},) for a batch of {batch}, got {tuple(lam.shape)} and "
            f"{tuple(index.shape)}"
        )
    weight = lam.to(features.dtype).view(batch, *([1] * (features.ndim - 1)))
    mixed = weight * features + (1 - weight) * features[index]
    if not mix_targets:
        return mixed, targets
    if targets is None:
        raise ValueError("mix_targets=True needs the targets to mix")
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"targets to mix must be (batch={batch}, num_labels) multi-hot or soft labels, got shape "
            f"{tuple(targets.shape)}; one-hot encode class ids first (torch.nn.functional.one_hot)"
        )
    targets = targets.to(torch.promote_types(targets.dtype, torch.float32))
    target_weight = lam.to(targets.dtype).unsqueeze(1)
    return mixed, target_weight * targets + (1 - target_weight) * targets[index]


__all__ = ["mix", "sample_mixup"]
