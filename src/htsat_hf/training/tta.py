"""Time-shift test-time augmentation of the original AudioSet evaluation.

The original (`SEDWrapper.test_step`, `Ensemble_SEDWrapper.forward`) predicts each clip, then rolls the waveform
left by `100 * (i + 1)` samples after prediction `i` and predicts again, 10 times:

    for i in range(10):
        pred = model(x); preds.append(pred)
        x = torch.cat([x[:, 100 * (i + 1):], x[:, :100 * (i + 1)]], dim=1)

The rolls accumulate on the already rolled waveform, so copy `i` (0-based) is the clip advanced by
`100 * (1 + 2 + ... + i) = 50 * i * (i + 1)` samples: 0, 100, 300, 600, ..., 4500 (the roll after the last
prediction is never used). "Advanced" means sample `s` of the copy is sample `(s + offset) mod length` of the clip:
the start wraps around to the end. Rolling acts on the clip after padding to the model's length (the original's
clips were stored padded to 10 s). The prediction is the mean of the copies' clip probabilities (sigmoid for
multi-label, softmax for single-label models), not of their logits. The original uses it for AudioSet only; for its
ESC-50 and Speech Commands evaluations it predicts once.
"""

import numpy as np
import torch

from ..audio import pcm_to_float
from ..errors import InputError
from ..feature_extraction_htsat import HTSATFeatureExtractor, _as_clip_list, pad_waveform


def time_shift_offsets(shifts: int = 10, step_samples: int = 100) -> list[int]:
    """Left-roll in samples of each of the `shifts` copies: `step_samples * i * (i + 1) / 2` for copy `i`.

    >>> time_shift_offsets()
    [0, 100, 300, 600, 1000, 1500, 2100, 2800, 3600, 4500]
    """
    if shifts < 1 or step_samples < 0:
        raise InputError(f"need shifts >= 1 and step_samples >= 0, got {shifts=}, {step_samples=}")
    return [step_samples * i * (i + 1) // 2 for i in range(shifts)]


def clip_probabilities(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Sigmoid of multi-label logits or softmax of single-label logits, `(batch, num_labels)`."""
    if problem_type == "multi_label_classification":
        return torch.sigmoid(logits)
    if problem_type == "single_label_classification":
        return torch.softmax(logits, dim=-1)
    raise InputError(
        f"problem_type must be 'multi_label_classification' or 'single_label_classification', got {problem_type!r}"
    )


@torch.no_grad()
def time_shift_tta(
    model: torch.nn.Module,
    waveforms,
    feature_extractor: HTSATFeatureExtractor,
    sampling_rate: int,
    shifts: int = 10,
    step_samples: int = 100,
) -> torch.Tensor:
    """Clip probabilities averaged over time-shifted copies of each clip, as the original's AudioSet evaluation.

    Args:
        model: an `HTSATForAudioClassification` (its `logits`) or `HTSATForSoundEventDetection` (its `clip_logits`).
            It runs in eval mode; its training flag is restored afterwards.
        waveforms: one clip or a batch in any form the feature extractor takes (a `(batch, samples)` array or
            tensor, a list of 1-D clips, ...); each clip is padded to the extractor's `max_length_seconds` (with its
            `pad_mode`) before rolling.
        feature_extractor: the model's feature extractor.
        sampling_rate: rate of `waveforms` in Hz; it must be the model's.
        shifts: number of copies (10 in the original; 1 is plain prediction).
        step_samples: roll increment in samples; copy `i` is advanced by `step_samples * i * (i + 1) / 2` samples
            (see [`time_shift_offsets`] and the module docstring).

    Returns:
        `(batch, num_labels)` float32 probabilities on the CPU.

    Raises:
        InputError: what the feature extractor refuses (rate, shape, samples), naming the clip.
    """
    offsets = time_shift_offsets(shifts, step_samples)
    device = next(model.parameters()).device
    problem_type = model.config.problem_type
    # The first call validates every clip (rate, mono, length, finite samples) before any padding here.
    unshifted = feature_extractor(waveforms, sampling_rate=sampling_rate, return_tensors="pt", device=device)
    # Same reading of the input forms as the extractor's. Integer PCM is scaled before padding: zeros are silence
    # only in float (8-bit WAV's silence is 128).
    clips = [pcm_to_float(clip, f"clip {index}") for index, clip in enumerate(_as_clip_list(waveforms))]
    padded = [pad_waveform(clip, feature_extractor.max_length_samples, feature_extractor.pad_mode) for clip in clips]

    was_training = model.training
    model.eval()
    try:
        total = None
        for offset in offsets:
            if offset == 0:
                features = unshifted["input_features"]
            else:
                rolled = [np.roll(clip, -offset) for clip in padded]
                features = feature_extractor(
                    rolled, sampling_rate=sampling_rate, return_tensors="pt", device=device
                )["input_features"]
            outputs = model(input_features=features, return_dict=True)
            logits = getattr(outputs, "clip_logits", None)
            logits = outputs.logits if logits is None else logits
            probabilities = clip_probabilities(logits.float(), problem_type)
            total = probabilities if total is None else total + probabilities
    finally:
        model.train(was_training)
    return (total / len(offsets)).cpu()


__all__ = ["clip_probabilities", "time_shift_offsets", "time_shift_tta"]
