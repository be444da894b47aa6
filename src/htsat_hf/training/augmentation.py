"""Mixup weights of the original AudioSet recipe.

The original mixes the log-mel features inside the model, after the BatchNorm over mel bins and SpecAugment:
`x_i <- lam_i * x_i + (1 - lam_i) * x_{B-1-i}`, with one `lam_i ~ Beta(0.5, 0.5)` per example and the batch reversed as
partner. It does not mix the targets: each mixed example keeps its own multi-hot target (a known quirk; its authors
comment that on noisy AudioSet labels this works as "adding noise" rather than a mix).

[`sample_mixup`] draws the weights; the model mixes its features with them ([`htsat_hf.modeling_htsat.mixup`], given
as `mixup_lambda`), and [`HTSATTrainer`] mixes the targets with the same function when asked to.
"""

import numpy as np
import torch

from ..errors import InputError


def sample_mixup(
    batch_size: int,
    alpha: float = 0.5,
    generator: np.random.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mixup weights for one batch: `(batch_size,)` float32 weights in [0, 1] of each example itself (its partner,
    example `batch_size - 1 - i`, gets the rest; with an odd batch the middle example is its own partner).

    Args:
        batch_size: examples in the batch.
        alpha: both parameters of the Beta distribution of the weights (0.5 in the original).
        generator: numpy random generator; `None` uses numpy's global random state, as the original does (seeded
            by `transformers.set_seed`).
        device: where to put the returned tensor.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if alpha <= 0:
        raise InputError(f"alpha must be positive, got {alpha}")
    rng = np.random if generator is None else generator
    return torch.from_numpy(np.asarray(rng.beta(alpha, alpha, size=batch_size), dtype=np.float32)).to(device)


__all__ = ["sample_mixup"]
