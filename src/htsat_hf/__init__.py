"""HTS-AT (Hierarchical Token-Semantic Audio Transformer) for Hugging Face transformers.

Importing the package registers the model with transformers' Auto classes, so `AutoConfig`,
`AutoFeatureExtractor`, `AutoModel`, `AutoModelForAudioClassification`, `AutoModelForAudioFrameClassification` and
`pipeline("audio-classification", ...)` resolve `model_type="htsat"`, and `pipeline("sound-event-detection", ...)`
detects timed events in audio of any length. Models saved by this package also carry their
code, so they load with `trust_remote_code=True` where the package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForAudioFrameClassification,
)

from .audio_classification_pipeline import HTSATAudioClassificationPipeline
from .configuration_htsat import HTSATConfig
from .cpu_fast_path_htsat import cpu_fast_path, frozen_weights, set_cpu_fast_path
from .engine import InferenceEngine, predict_files
from .errors import InputError
from .feature_extraction_htsat import HTSATFeatureExtractor
from .modeling_htsat import (
    HTSATForAudioClassification,
    HTSATForSoundEventDetection,
    HTSATModel,
    HTSATPreTrainedModel,
)
from .sed.pipeline import SoundEventDetectionPipeline
from .sed.windows import FrameScores, sliding_window_scores

__version__ = "0.1.0"

AutoConfig.register(HTSATConfig.model_type, HTSATConfig, exist_ok=True)
AutoFeatureExtractor.register(HTSATConfig, HTSATFeatureExtractor, exist_ok=True)
AutoModel.register(HTSATConfig, HTSATModel, exist_ok=True)
AutoModelForAudioClassification.register(HTSATConfig, HTSATForAudioClassification, exist_ok=True)
AutoModelForAudioFrameClassification.register(HTSATConfig, HTSATForSoundEventDetection, exist_ok=True)

HTSATConfig.register_for_auto_class()
HTSATFeatureExtractor.register_for_auto_class()
HTSATModel.register_for_auto_class("AutoModel")
HTSATForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
HTSATForSoundEventDetection.register_for_auto_class("AutoModelForAudioFrameClassification")

__all__ = [
    "HTSATConfig",
    "HTSATFeatureExtractor",
    "HTSATForAudioClassification",
    "HTSATForSoundEventDetection",
    "HTSATModel",
    "HTSATPreTrainedModel",
    "FrameScores",
    "HTSATAudioClassificationPipeline",
    "InferenceEngine",
    "InputError",
    "SoundEventDetectionPipeline",
    "predict_files",
    "sliding_window_scores",
    "cpu_fast_path",
    "frozen_weights",
    "set_cpu_fast_path",
]
