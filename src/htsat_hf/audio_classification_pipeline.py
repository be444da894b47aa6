"""`pipeline("audio-classification", model=<an HTS-AT model>)` reading audio through `htsat_hf.audio`.

transformers' own `AudioClassificationPipeline` takes fewer forms of audio than the rest of the package and reads them
differently: its `ffmpeg` downmix (`-ac 1`) makes a stereo file with equal channels 3 dB louder than the mono file,
int16 samples at another rate fail in its resampler, and `datasets` decoder values and `(1, samples)` arrays are
refused, with library errors that name no file. Importing `htsat_hf` makes the task's registered class
[`HTSATAudioClassificationPipeline`], a subclass that reads HTS-AT models' inputs with [`load_waveform`] (the same
samples as the detection pipeline, `htsat-hf predict` and `run_sed.py`) and leaves every other model's path exactly as
transformers has it.
"""

from transformers import AudioClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .audio import load_waveform
from .configuration_htsat import HTSATConfig
from .feature_extraction_htsat import HTSATFeatureExtractor

TASK = "audio-classification"


class HTSATAudioClassificationPipeline(AudioClassificationPipeline):
    """transformers' audio-classification pipeline; for HTS-AT models, inputs in every form `load_waveform` takes.

    Inputs (HTS-AT): a path or bytes (decoded, downmixed by averaging the channels, resampled), a mono numpy array
    or torch tensor of samples at the model's rate (float in [-1, 1] or integer PCM), `{"raw" or "array":
    samples, "sampling_rate": rate}` (resampled with torchaudio, integer samples included), `{"path", "bytes"}`, or a
    torchcodec `AudioDecoder` (decoded `datasets` >= 4 values). The clip is then handled as the model was trained:
    padded to the extractor's `max_length_seconds` by its `pad_mode`; a longer clip is refused (slide over it with
    `pipeline("sound-event-detection")` or `htsat-hf predict`).

    Raises:
        InputError: one line naming the audio, for any form or content `load_waveform` or the extractor refuses; at
            construction, for an HTS-AT model, a feature extractor that does not fit its config
            (`check_matches_config`: another front end, or clips longer than the model reads).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model.config.model_type == HTSATConfig.model_type and isinstance(
            self.feature_extractor, HTSATFeatureExtractor
        ):
            # Otherwise a front end the model was not trained on scores silently, and clips longer than the model
            # reads fail deep inside it on every call.
            self.feature_extractor.check_matches_config(self.model.config)

    def preprocess(self, inputs):
        if self.model.config.model_type != HTSATConfig.model_type:
            return super().preprocess(inputs)
        rate = self.feature_extractor.sampling_rate
        # Not cast to the pipeline's dtype, unlike transformers' pipeline: the model casts its float32 log-mel to its
        # feature normalisation's dtype itself (float32 in a model loaded in bf16; see HTSATModel.forward).
        return self.feature_extractor(load_waveform(inputs, rate), sampling_rate=rate, return_tensors="pt")


# The task keeps its defaults and model classes; only its implementation becomes the subclass above, which runs
# transformers' own code for every model that is not HTS-AT.
PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] = HTSATAudioClassificationPipeline

__all__ = ["HTSATAudioClassificationPipeline"]
