"""Class-balanced sampling of the original AudioSet recipe."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import InputError


class BalancedClassSampler(Sampler[int]):
    r"""
    Class-balanced sampler of the original AudioSet recipe: each round shuffles the classes and draws, for each
    class in that order, one clip containing it uniformly at random; rounds repeat until one epoch's worth of
    samples (the last round is cut short). Rare and frequent classes are thus drawn equally often, and a clip with
    several labels can be drawn once per label.

    The draw of an epoch is a pure function of `(seed, epoch)`, so every process computes the same global draw; under
    distribution rank `r` takes its interleaved share `draw[r::num_replicas]`. The shares are disjoint (as positions
    in the draw; a clip drawn twice may land on two ranks) and of equal length: the global draw has
    `num_replicas * ceil(num_samples / num_replicas)` samples.

    Args:
        labels: the labels of every clip of the dataset, either a `(num_clips, num_classes)` multi-hot numpy array or
            torch tensor, or a sequence with one entry per clip holding its class ids (a sequence of ints, or one
            int). A Python list of multi-hot rows would be read as class ids: pass `np.asarray(rows)` instead.
            Classes without any clip cannot be drawn and are left out of the rounds.
        num_samples: samples per epoch over all replicas (the original uses the dataset size).
        num_replicas: number of processes sharing the epoch. With transformers' `Trainer` keep the default 1 on every
            process: accelerate already gives each process its share of the batches, and sharding here too would
            leave each process a `1 / num_replicas**2` part. Set it for hand-written `DistributedDataParallel` loops.
        rank: this process's index in `[0, num_replicas)`.
        seed: base seed; it must be equal on all processes.

    Attributes:
        classes: the class ids that have at least one clip, ascending: the classes each round shuffles.

    Call [`set_epoch`] at the start of every epoch for a fresh draw (`Trainer` and accelerate do it). For resuming a
    hand-written loop, [`state_dict`] holds the epoch and the position within it; [`load_state_dict`] makes the next
    iteration continue there.
    """

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor | Sequence[int | Sequence[int]],
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        if num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise InputError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}")
        clips, classes = _label_pairs(labels)
        if clips.size == 0:
            raise InputError("no clip has any label: class-balanced sampling needs at least one labelled clip")
        # Clips of every class laid end to end (class-major), so one epoch's draw is a few vectorised operations.
        by_class = np.argsort(classes, kind="stable")
        self.classes, counts = np.unique(classes, return_counts=True)
        self._members = clips[by_class]
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._counts = counts
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.num_samples = -(-int(num_samples) // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Samples per epoch on this rank (the same on every rank)."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of `epoch`; moving to another epoch starts it from its beginning."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = int(epoch)

    def global_draw(self, epoch: int) -> np.ndarray:
        """Clip indices of the whole epoch over all replicas, shape `(total_size,)`."""
        rng = np.random.default_rng((self.seed, epoch))
        num_classes = self.classes.size
        rounds = -(-self.total_size // num_classes)
        order = rng.permuted(np.tile(np.arange(num_classes), (rounds, 1)), axis=1).ravel()[: self.total_size]
        picks = rng.integers(0, self._counts[order])
        return self._members[self._starts[order] + picks]

    def rank_draw(self, epoch: int) -> np.ndarray:
        """This rank's clip indices for `epoch`, shape `(num_samples,)`."""
        return self.global_draw(epoch)[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_draw(self.epoch)
        if self.position >= len(indices):
            # A finished pass without set_epoch repeats the epoch, as torch's DistributedSampler does.
            self.position = 0
        while self.position < len(indices):
            self.position += 1
            yield int(indices[self.position - 1])

    def state_dict(self) -> dict[str, int]:
        """`{"epoch", "position", "seed"}`; `position` counts the indices handed out in this epoch.

        A `DataLoader` asks for indices ahead of the batches it returns (with workers, up to
        `num_workers * prefetch_factor` batches ahead), so for an exact resume store the number of samples your loop
        actually consumed as `position` rather than this value.
        """
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from `state`: the next iteration yields the draw of `state["epoch"]` from `state["position"]`."""
        if state["seed"] != self.seed:
            raise InputError(
                f"the saved sampler state was drawn with seed {state['seed']} but this sampler has seed {self.seed}; "
                "the resumed order would not continue the saved one"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def _label_pairs(labels) -> tuple[np.ndarray, np.ndarray]:
    """`(clip_ids, class_ids)`: one pair per label of every clip, as int64 arrays."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 2:
            raise InputError(
                f"a labels array must be a (num_clips, num_classes) multi-hot matrix, got shape {labels.shape}; pass "
                "class ids as a list with one entry per clip"
            )
        clips, classes = np.nonzero(labels)
        return clips.astype(np.int64), classes.astype(np.int64)
    clips, classes = [], []
    for clip, clip_labels in enumerate(labels):
        ids = [clip_labels] if isinstance(clip_labels, (int, np.integer)) else list(clip_labels)
        clips.extend([clip] * len(ids))
        classes.extend(int(class_id) for class_id in ids)
    clips, classes = np.array(clips, dtype=np.int64), np.array(classes, dtype=np.int64)
    if (classes < 0).any():
        bad = int(np.argmax(classes < 0))
        raise InputError(f"clip {clips[bad]} has the negative class id {classes[bad]}")
    return clips, classes


__all__ = ["BalancedClassSampler"]
