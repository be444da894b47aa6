"""`pipeline("sound-event-detection", model=...)`: audio of any length in, timed events out."""

from os import PathLike

from transformers import AutoModelForAudioFrameClassification, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from ..audio import load_waveform
from .postprocessing import ClassMap, frame_scores_events, load_class_map, map_frame_scores, resolve_thresholds
from .windows import check_detection_duration, sliding_window_scores

TASK = "sound-event-detection"


class SoundEventDetectionPipeline(Pipeline):
    """Detect sound events with an `HTSATForSoundEventDetection` model in audio of any length.

    Inputs: every form `htsat_hf.audio.load_waveform` takes: a file path or bytes (decoded, resampled to the model's
    rate and downmixed), a mono numpy array, torch tensor of samples at the model's rate (float in [-1, 1] or
    integer PCM such as int16), `{"raw" or "array": samples, "sampling_rate": rate}` (resampled with torchaudio), an
    undecoded `datasets` value `{"path", "bytes"}`, or a torchcodec `AudioDecoder` (decoded `datasets` >= 4 values).

    Call arguments:
        threshold: one threshold for every class, a `{label: threshold}` dict naming every class, or a thresholds
            file (see `postprocessing.resolve_thresholds`; default: a class map's own thresholds when it carries
            some, else 0.5).
        class_map: a `ClassMap`, a class map file, or `"desed"` (AudioSet to DESED, with the paper's thresholds).
        median_filter_seconds, min_duration, min_gap: post-processing in seconds (default none).
        window_seconds, hop_seconds, batch_size: the sliding window over long audio (see `sliding_window_scores`).
        return_frame_scores: also return the `FrameScores` (step probabilities with their times).

    Returns:
        A list of `{"onset", "offset", "label", "score"}` dicts (seconds, probability) sorted by onset, or with
        `return_frame_scores` `{"events": [...], "frame_scores": FrameScores}`.

    Raises:
        InputError: audio it cannot read (naming it), thresholds or a class map that do not fit the classes; at
            construction, a feature extractor whose front end differs from the model's config.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A front end other than the one the model was trained with gives wrong scores without any error.
        self.feature_extractor.check_matches_config(self.model.config)

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
        name = str(inputs) if isinstance(inputs, (str, PathLike)) else "the audio"
        waveform = load_waveform(inputs, rate, name=name)
        check_detection_duration(waveform.shape[0] / rate, name)
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
            frame_scores = map_frame_scores(frame_scores, class_map)
        thresholds = resolve_thresholds(frame_scores.labels, threshold, class_map)
        events = [
            event._asdict()
            for event in frame_scores_events(frame_scores, thresholds, median_filter_seconds, min_duration, min_gap)
        ]
        return {"events": events, "frame_scores": frame_scores} if return_frame_scores else events

    def forward(self, model_inputs, **forward_params):
        # The windows are moved to the model's device inside `sliding_window_scores`; the waveform stays a numpy
        # array, which the base class's device handling would not accept for the frame scores it returns.
        return self._forward(model_inputs, **forward_params)


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=SoundEventDetectionPipeline, pt_model=AutoModelForAudioFrameClassification, type="audio"
)

__all__ = ["SoundEventDetectionPipeline"]
