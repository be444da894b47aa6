"""`pipeline("sound-event-detection", model=...)`: audio of any length in, timed events out."""

import numpy as np
from transformers import AutoModelForAudioFrameClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.audio_utils import ffmpeg_read

from .sed_inference import sliding_window_scores
from .sed_postprocessing import ClassMap, load_class_map

TASK = "sound-event-detection"


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample with torchaudio (an optional dependency, like in transformers' audio pipelines)."""
    try:
        import torch
        from torchaudio.functional import resample as torchaudio_resample
    except ImportError as error:
        raise ImportError(
            f"audio at {orig_sr} Hz must be resampled to the model's {target_sr} Hz: install torchaudio, or resample "
            "it yourself"
        ) from error
    return torchaudio_resample(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), orig_sr, target_sr).numpy()


class SoundEventDetectionPipeline(Pipeline):
    """Detect sound events with an `HTSATForSoundEventDetection` model in audio of any length.

    Inputs: a file path or bytes (decoded and resampled by the `ffmpeg` program), a mono numpy array at the model's
    sampling rate, or `{"raw" or "array": array, "sampling_rate": rate}` (resampled with torchaudio).

    Call arguments:
        threshold: one threshold for every class, or a `{label: threshold}` dict (default 0.5; a class map's own
            thresholds when it carries some).
        class_map: a `ClassMap`, a class map file, or `"desed"` (AudioSet to DESED, with the paper's thresholds).
        median_filter_seconds, min_duration, min_gap: post-processing in seconds (default none).
        window_seconds, hop_seconds, batch_size: the sliding window over long audio (see `sliding_window_scores`).
        return_frame_scores: also return the `FrameScores` (step probabilities with their times).

    Returns:
        A list of `{"onset", "offset", "label", "score"}` dicts sorted by onset, or with `return_frame_scores`
        `{"events": [...], "frame_scores": FrameScores}`.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        threshold=None,
        class_map=None,
        median_filter_seconds=None,
        min_duration=None,
        min_gap=None,
        window_seconds=None,
        hop_seconds=None,
        batch_size=None,
        return_frame_scores=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"{TASK} pipeline got unexpected arguments: {sorted(kwargs)}")
        forward = {k: v for k, v in dict(window_seconds=window_seconds, hop_seconds=hop_seconds,
                                         batch_size=batch_size).items() if v is not None}
        post = {k: v for k, v in dict(threshold=threshold, median_filter_seconds=median_filter_seconds,
                                      min_duration=min_duration, min_gap=min_gap,
                                      return_frame_scores=return_frame_scores).items() if v is not None}
        if class_map is not None:
            post["class_map"] = class_map if isinstance(class_map, ClassMap) else load_class_map(
                class_map, num_classes=self.model.config.num_labels
            )
        return {}, forward, post

    def preprocess(self, inputs):
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, str):
            with open(inputs, "rb") as handle:
                inputs = handle.read()
        if isinstance(inputs, bytes):
            inputs = ffmpeg_read(inputs, rate)
        if isinstance(inputs, dict):
            if "sampling_rate" not in inputs or not ("raw" in inputs or "array" in inputs):
                raise ValueError('a dict input needs "raw" (or "array") and "sampling_rate"')
            waveform = np.asarray(inputs["raw"] if "raw" in inputs else inputs["array"], dtype=np.float32)
            if inputs["sampling_rate"] != rate:
                waveform = resample(waveform, inputs["sampling_rate"], rate)
            inputs = waveform
        if hasattr(inputs, "detach"):
            inputs = inputs.detach().cpu().numpy()
        waveform = np.asarray(inputs)
        if waveform.ndim != 1:
            raise ValueError(f"expected mono audio (samples,), got shape {waveform.shape}; downmix it first")
        return {"waveform": waveform}

    def _forward(self, model_inputs, window_seconds=None, hop_seconds=None, batch_size=8):
        return sliding_window_scores(
            self.model,
            self.feature_extractor,
            model_inputs["waveform"],
            self.feature_extractor.sampling_rate,
            window_seconds=window_seconds,
            hop_seconds=hop_seconds,
            batch_size=batch_size,
        )

    def postprocess(
        self,
        frame_scores,
        threshold=None,
        class_map=None,
        median_filter_seconds=None,
        min_duration=0.0,
        min_gap=0.0,
        return_frame_scores=False,
    ):
        if class_map is not None:
            frame_scores = frame_scores.mapped(class_map)
        if isinstance(threshold, dict):
            missing = sorted(set(frame_scores.labels) - set(threshold))
            if missing:
                raise ValueError(f"threshold dict has no value for {missing[:5]}")
            thresholds = np.array([threshold[label] for label in frame_scores.labels])
        elif threshold is None:
            thresholds = class_map.threshold_vector() if class_map is not None and class_map.thresholds else 0.5
        else:
            thresholds = float(threshold)
        events = [
            event._asdict()
            for event in frame_scores.events(thresholds, median_filter_seconds, min_duration, min_gap)
        ]
        return {"events": events, "frame_scores": frame_scores} if return_frame_scores else events

    def forward(self, model_inputs, **forward_params):
        # The windows are moved to the model's device inside `sliding_window_scores`; the waveform stays a numpy
        # array, which the base class's device handling would not accept for the frame scores it returns.
        return self._forward(model_inputs, **forward_params)


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=SoundEventDetectionPipeline, pt_model=AutoModelForAudioFrameClassification, type="audio"
)

__all__ = ["SoundEventDetectionPipeline", "resample"]
