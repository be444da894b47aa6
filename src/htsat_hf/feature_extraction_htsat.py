"""Waveform to log-mel front end of HTS-AT.

The data path starts here: `HTSATFeatureExtractor.__call__` checks and pads raw waveforms, then
`log_mel_spectrogram` turns a batch of them into the log-mel features the model reads. The numerics are those of the
original implementation (torchlibrosa), which librosa reproduces exactly: periodic Hann window of `n_fft`, centred
frames with reflect padding, power spectrum, Slaney-scale mel filters with Slaney area normalisation,
`10 * log10(max(x, 1e-10))` and no `top_db` clipping.
"""

import math
import numbers
import warnings
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from .audio import check_waveform, pcm_to_float
from .cpu_fast_path_htsat import clips_per_cpu_chunk
from .errors import InputError

PAD_MODES = ("zeros", "repeat", "repeatpad")
# The dtype the STFT and mel projection run in; features are float32 either way.
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
# The front-end settings an HTSATConfig and its feature extractor both hold: (config attribute, extractor attribute).
FRONT_END_FIELDS = (
    ("sampling_rate", "sampling_rate"),
    ("hop_length", "hop_length"),
    ("n_fft", "n_fft"),
    ("num_mel_bins", "feature_size"),
    ("f_min", "f_min"),
    ("f_max", "f_max"),
)
# The clip length of the AudioSet recipe, and of an extractor built without one when the model reads it whole.
DEFAULT_MAX_LENGTH_SECONDS = 10.0


def model_max_length_seconds(config) -> float:
    """The longest clip, in seconds, whose log-mel the model of `config` reads whole.

    The model reads at most `config.max_frames` (`spec_size * freq_ratio`) frames, and a clip of `samples` samples
    gives `1 + samples // hop_length` (centred STFT), so `(max_frames - 1) * hop_length` samples is the longest whole
    number of hops that fits: 10.23 s at the defaults (1024 frames of 10 ms), 5.11 s with 100 or 128 mel bins
    (freq_ratio 2: 512 frames), 2.55 s with `spec_size=128, patch_size=2` (256 frames), 5.115 s with
    `hop_length=160` (1024 frames of 5 ms).
    """
    return (config.max_frames - 1) * config.hop_length / config.sampling_rate


def htsat_mel_filters(sampling_rate: int, n_fft: int, num_mel_bins: int, f_min: float, f_max: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filters, shape `(n_fft // 2 + 1, num_mel_bins)`, float32.

    Equal to `librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mel_bins, fmin=f_min, fmax=f_max).T`.
    Filters entirely above Nyquist are all zero, as in the original 16 kHz recipe whose `f_max` stays at 14 kHz.
    """
    with warnings.catch_warnings():
        # The all-zero filters above Nyquist are intended (original Speech Commands recipe); they give -100 dB bins.
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=num_mel_bins,
            min_frequency=f_min,
            max_frequency=f_max,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
            dtype=np.float32,
        )
    return filters


def log_mel_spectrogram(
    waveforms: torch.Tensor, mel_filters: torch.Tensor, n_fft: int, hop_length: int
) -> torch.Tensor:
    """Log-mel spectrogram of a batch of mono waveforms, as batched torch STFTs.

    Args:
        waveforms: `(batch, samples)` float tensor, more than `n_fft // 2` samples (reflect padding needs them).
        mel_filters: `(n_fft // 2 + 1, mel_bins)` filter matrix, see [`htsat_mel_filters`].
        n_fft: FFT size and periodic Hann window length.
        hop_length: hop between frames in samples.

    Returns:
        `(batch, frames, mel_bins)` tensor in dB with `frames = 1 + samples // hop_length`.
    """
    clips, device_type = waveforms.shape[0], waveforms.device.type
    if device_type == "cpu":
        # A few clips at a time, so the complex spectrum (4 MB per 10 s clip) stays in cache and its memory is
        # reused; a whole batch's spectrum is page-faulted afresh on every call. Per clip was 2.8x faster for a
        # batch of eight 10 s clips on a 2-core EPYC, results bit for bit the same. Part of the CPU fast path
        # (its `chunks` switch and byte budget).
        spectrum_bytes = (1 + waveforms.shape[1] // hop_length) * (n_fft // 2 + 1) * 2 * waveforms.element_size()
        clips = clips_per_cpu_chunk(spectrum_bytes)
    # The power re² + im² is summed inside the mel projection: squaring the (real, imaginary) pairs in place and
    # giving both halves of a bin the same filter weight saves a pass and a copy over the whole spectrum.
    pair_filters = mel_filters.to(waveforms.dtype).repeat_interleave(2, dim=0)  # (2 * freq, mel_bins)
    window = torch.hann_window(n_fft, periodic=True, dtype=waveforms.dtype, device=waveforms.device)
    # The caller's autocast must not reach the front end: a bfloat16 mel matmul is 0.14 dB off.
    with torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext():
        chunks = [_log_mel(chunk, pair_filters, window, hop_length) for chunk in waveforms.split(clips)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _log_mel(
    waveforms: torch.Tensor, pair_filters: torch.Tensor, window: torch.Tensor, hop_length: int
) -> torch.Tensor:
    n_fft = window.shape[0]
    spectrum = torch.stft(
        waveforms,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    squares = torch.view_as_real(spectrum.transpose(1, 2)).square_().flatten(2)  # (batch, frames, 2 * freq)
    mel = torch.matmul(squares, pair_filters)
    return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


def pad_waveform(waveform: np.ndarray, length: int, pad_mode: str) -> np.ndarray:
    """Bring a 1-D clip to `length` samples (longer clips are cut to their start).

    `pad_mode`: `"zeros"` appends silence (AudioSet recipe); `"repeat"` tiles the clip and cuts the last copy
    (ESC-50/Speech Commands recipes); `"repeatpad"` tiles it a whole number of times, `length // samples`, then
    appends silence: `ClapFeatureExtractor`'s `padding="repeatpad"` (its default), so that
    models converted from CLAP see the clips they were trained on.
    """
    if waveform.shape[0] >= length:
        return waveform[:length]
    if pad_mode == "repeat":
        repeats = -(-length // waveform.shape[0])
        return np.tile(waveform, repeats)[:length]
    if pad_mode == "repeatpad":
        waveform = np.tile(waveform, length // waveform.shape[0])
    return np.pad(waveform, (0, length - waveform.shape[0]))


class HTSATFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns raw mono waveforms into the log-mel features of HTS-AT, with batched torch STFTs on CPU or the model's device.

    HTS-AT reads every clip at one length and has no attention mask, so the extractor returns none (old saved
    `preprocessor_config.json` files with a `return_attention_mask` entry still load; the entry is dropped).

    Args:
        feature_size (`int`, defaults to 64): number of mel bins.
        sampling_rate (`int`, defaults to 32000): the rate the model was trained at; input at any other rate is
            refused (resample first, for example with `datasets.Audio(sampling_rate=...)` or `librosa.resample`).
        hop_length (`int`, defaults to 320): STFT hop in samples.
        n_fft (`int`, defaults to 1024): FFT size and window length.
        f_min (`float`, defaults to 50.0), f_max (`float`, defaults to 14000.0): mel filter range in Hz.
        max_length_seconds (`float`, defaults to 10.0): the clip length of the model. Shorter clips are padded to it
            (with `padding="max_length"`); longer ones are refused unless `truncation=True`. A model reads at most
            [`model_max_length_seconds`] of its config ([`check_matches_config`] refuses a longer clip length);
            [`from_config`] picks a length it reads.
        pad_mode (`str`, defaults to `"zeros"`): `"zeros"` pads with silence (AudioSet recipe); `"repeat"` tiles
            the clip (ESC-50 and Speech Commands recipes); `"repeatpad"` tiles it a whole number of times and pads
            the rest with silence (CLAP's default, for models converted with `htsat-hf convert-clap`); see
            [`pad_waveform`].
        precision (`str`, defaults to `"float32"`): dtype of the STFT and mel projection, `"float32"` (HTS-AT's
            front end, which computed in float32) or `"float64"`. The features are float32 either way. float64
            reproduces transformers' `ClapFeatureExtractor`, which computes in float64 with numpy, to the float32
            rounding of the result (about 1e-5 dB); float32 rounding of the spectrum differs from it by up to about
            0.05 dB in mel bins 60 dB or more below a frame's loudest (a pure tone's far bins). `htsat-hf
            convert-clap` sets `"float64"` for converted CLAP towers.
        padding_value (`float`, defaults to 0.0): unused by the log-mel path, required by the base class.

    Raises:
        InputError: an unknown `pad_mode` or `precision`, or a `max_length_seconds` that is not a positive finite
            number, or shorter than the front end can frame ([`min_length_samples`]).

    Example:

    ```python
    >>> import numpy as np
    >>> from htsat_hf import HTSATFeatureExtractor
    >>> extractor = HTSATFeatureExtractor()
    >>> features = extractor(np.zeros(32000 * 4, dtype=np.float32), sampling_rate=32000, return_tensors="pt")
    >>> features["input_features"].shape  # padded to 10 s: 1001 frames of 64 mel bins
    torch.Size([1, 1001, 64])
    ```
    """

    model_input_names = ["input_features"]
    # Read by transformers' padding helpers (`SequenceFeatureExtractor.pad`); a class attribute, so never saved.
    return_attention_mask = False

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 32000,
        hop_length: int = 320,
        n_fft: int = 1024,
        f_min: float = 50.0,
        f_max: float = 14000.0,
        max_length_seconds: float = DEFAULT_MAX_LENGTH_SECONDS,
        pad_mode: str = "zeros",
        precision: str = "float32",
        padding_value: float = 0.0,
        **kwargs,
    ):
        # Saved by earlier versions; transformers passes every saved key back as an argument.
        kwargs.pop("return_attention_mask", None)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        del self.return_attention_mask  # the base class sets it per instance; the class attribute (False) holds
        if pad_mode not in PAD_MODES:
            raise InputError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if (
            isinstance(max_length_seconds, bool)
            or not isinstance(max_length_seconds, numbers.Real)
            or not math.isfinite(max_length_seconds * sampling_rate)  # a number of samples, not an overflow
            or max_length_seconds <= 0
        ):
            raise InputError(
                f"max_length_seconds must be a positive, finite number of seconds, got {max_length_seconds!r}"
            )
        self.hop_length = int(hop_length)
        self.n_fft = int(n_fft)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.max_length_seconds = float(max_length_seconds)
        if self.max_length_samples < self.min_length_samples:
            raise InputError(
                f"max_length_seconds {self.max_length_seconds:g} gives clips of {self.max_length_samples} samples; the "
                f"front end needs at least {self.min_length_samples} ({self.min_length_samples / sampling_rate:g} s "
                f"at {sampling_rate} Hz)"
            )
        self.pad_mode = pad_mode
        self.precision = precision
        self._mel_filters = torch.from_numpy(
            htsat_mel_filters(self.sampling_rate, self.n_fft, self.feature_size, self.f_min, self.f_max)
        )

    @classmethod
    def from_config(cls, config, max_length_seconds: float | None = None, **kwargs) -> "HTSATFeatureExtractor":
        """The feature extractor matching an [`HTSATConfig`]'s front end, with clips the model reads whole.

        Args:
            config: the model's [`HTSATConfig`].
            max_length_seconds: the clip length. Default: 10 s (the AudioSet recipe), or, for a config whose model
                reads fewer frames than a 10 s clip gives (more than 64 mel bins, a smaller `spec_size`, a shorter
                `hop_length`), the longest clip it reads, [`model_max_length_seconds`] (5.11 s for 100 mel bins).
            kwargs: the other clip handling (`pad_mode`, `precision`).

        Raises:
            InputError: a `max_length_seconds` whose clips give more frames than the model reads (see
                [`check_matches_config`]), or a value the constructor refuses.
        """
        if max_length_seconds is None:
            max_length_seconds = min(DEFAULT_MAX_LENGTH_SECONDS, model_max_length_seconds(config))
        extractor = cls(
            feature_size=config.num_mel_bins,
            sampling_rate=config.sampling_rate,
            hop_length=config.hop_length,
            n_fft=config.n_fft,
            f_min=config.f_min,
            f_max=config.f_max,
            max_length_seconds=max_length_seconds,
            **kwargs,
        )
        extractor.check_matches_config(config)
        return extractor

    def to_dict(self):
        output = super().to_dict()
        output.pop("_mel_filters", None)
        return output

    def check_matches_config(self, config) -> None:
        """Refuse an extractor whose front end differs from the model's config (the model's BatchNorm and
        weights were trained on the config's log-mel, so any difference silently ruins its scores), or whose clips
        give more log-mel frames than the model reads (`config.max_frames`; the model stretches shorter
        spectrograms but cannot shrink longer ones, so every full clip would fail in the model).

        Args:
            config: the model's [`HTSATConfig`].

        Raises:
            InputError: one line listing every differing value, e.g. `hop_length: config 320, feature extractor
                160`; or, the front end being the same, naming the frames of a full clip, the frames the model
                reads and the longest clip length it reads ([`model_max_length_seconds`]); or a `config` that is not
                a model config (None, a dict).
        """
        missing = [name for name, _ in FRONT_END_FIELDS if not hasattr(config, name)]
        if missing or not hasattr(config, "max_frames"):
            raise InputError(
                f"check_matches_config needs the model's HTSATConfig (model.config), got {type(config).__name__}"
            )
        differences = [
            f"{config_name}: config {getattr(config, config_name)!r}, feature extractor {getattr(self, own_name)!r}"
            for config_name, own_name in FRONT_END_FIELDS
            if getattr(config, config_name) != getattr(self, own_name)
        ]
        if differences:
            raise InputError(
                "the feature extractor does not match the model's config (" + "; ".join(differences) + "); save "
                "the extractor built by HTSATFeatureExtractor.from_config(model.config) beside the model"
            )
        if self.max_length_frames > config.max_frames:
            raise InputError(
                f"the feature extractor's {self.max_length_seconds:g} s clips give {self.max_length_frames:.6g} log-mel "
                f"frames, but the model reads at most {config.max_frames} (spec_size {config.spec_size} x freq_ratio "
                f"{config.freq_ratio}); set the extractor's max_length_seconds to at most "
                f"{model_max_length_seconds(config):g}, as HTSATFeatureExtractor.from_config(model.config) does"
            )

    @property
    def max_length_samples(self) -> int:
        return int(round(self.max_length_seconds * self.sampling_rate))

    @property
    def max_length_frames(self) -> int:
        """Log-mel frames of a full clip: `1 + max_length_samples // hop_length` (centred STFT)."""
        return 1 + self.max_length_samples // self.hop_length

    @property
    def min_length_samples(self) -> int:
        """Shortest clip the centred STFT can frame (its reflect padding needs more than `n_fft // 2` samples)."""
        return self.n_fft // 2 + 1

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str = "max_length",
        truncation: bool = False,
        pad_mode: str | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Compute log-mel features for one clip or a batch of clips.

        Args:
            raw_speech: a mono clip as a 1-D numpy array, torch tensor or list of numbers; or a batch as a list of
                those or a 2-D `(batch, samples)` array or tensor. Float samples in [-1, 1], or int8/uint8/int16/int32
                PCM (scaled to [-1, 1) by `audio.pcm_to_float`).
            sampling_rate: rate of `raw_speech` in Hz. Required: it must equal the extractor's rate.
            padding: `"max_length"` (default) pads every clip to `max_length_seconds`; `"longest"` (or `True`) pads
                only to the longest clip of the batch; `False`/`"do_not_pad"` requires clips of equal length.
            truncation: cut clips longer than `max_length_seconds` to their start instead of refusing them.
            pad_mode: `"zeros"`, `"repeat"` or `"repeatpad"`; defaults to the extractor's `pad_mode`.
            return_tensors: `"pt"`, `"np"` or `None` (lists).
            device: where to compute the STFT (for example `"cuda"`); features stay there with `return_tensors="pt"`.

        Returns:
            [`BatchFeature`] with `input_features` of shape `(batch, frames, feature_size)`, in dB before the model's
            BatchNorm. A 10 s clip at the default settings gives 1001 frames.

        Raises:
            InputError: a missing or different `sampling_rate`, a clip that is empty, multi-channel, has NaN/Inf or
                unscaled PCM samples, is too long (without `truncation`) or too short, unequal lengths with
                `padding=False`, or an unknown `padding`, `pad_mode` or `return_tensors`; the message names the clip.
            TypeError: an unknown keyword argument, or `raw_speech` of a type that holds no samples.
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.__call__ got unexpected arguments: {sorted(kwargs)}")
        self.check_sampling_rate(sampling_rate)
        pad_mode = self.pad_mode if pad_mode is None else pad_mode
        if pad_mode not in PAD_MODES:
            raise InputError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        clips = [_to_mono_float(clip, f"clip {index}") for index, clip in enumerate(_as_clip_list(raw_speech))]
        if not clips:
            raise InputError("raw_speech is an empty batch: pass at least one clip")

        clips = self._fit_lengths(clips, padding, truncation, pad_mode)
        batch = torch.from_numpy(np.stack(clips)).to(PRECISIONS[self.precision])
        if device is not None:
            batch = batch.to(device)
        features = log_mel_spectrogram(batch, self._mel_filters.to(batch.device), self.n_fft, self.hop_length)
        features = features.float()  # a no-op at float32 precision

        if return_tensors == "pt":
            return BatchFeature({"input_features": features})
        features = features.cpu().numpy()
        if return_tensors == "np":
            return BatchFeature({"input_features": features}, tensor_type="np")
        if return_tensors is None:
            return BatchFeature({"input_features": list(features)})
        raise InputError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

    def check_sampling_rate(self, sampling_rate):
        """Refuse (with `InputError`) a missing rate or one other than the model's, saying how to resample."""
        if sampling_rate is None:
            raise InputError(
                f"sampling_rate is required: this model expects {self.sampling_rate} Hz audio. Pass "
                f"sampling_rate=<rate of your audio>; audio at another rate must be resampled first."
            )
        if sampling_rate != self.sampling_rate:
            raise InputError(
                f"the audio is sampled at {sampling_rate} Hz but this model expects {self.sampling_rate} Hz. "
                f"Resample it first, e.g. librosa.resample(wave, orig_sr={sampling_rate}, "
                f"target_sr={self.sampling_rate}) or datasets' Audio(sampling_rate={self.sampling_rate}); the "
                "audio-classification pipeline resamples inputs given as {'raw': array, 'sampling_rate': rate}."
            )

    def _fit_lengths(self, clips, padding, truncation, pad_mode):
        max_samples = self.max_length_samples
        too_long = [(i, c.shape[0]) for i, c in enumerate(clips) if c.shape[0] > max_samples]
        if too_long and not truncation:
            index, length = too_long[0]
            raise InputError(
                f"clip {index} is {length / self.sampling_rate:.2f} s long ({length} samples) but the model reads at "
                f"most {self.max_length_seconds:g} s ({max_samples} samples) per clip. Pass truncation=True to keep "
                f"only the first {self.max_length_seconds:g} s, or run long audio in windows (htsat_hf's "
                "sound-event-detection tools slide the model over audio of any length)."
            )
        clips = [c[:max_samples] for c in clips]

        if padding in (True, "longest"):
            target = max(c.shape[0] for c in clips)
        elif padding == "max_length":
            target = max_samples
        elif padding in (False, "do_not_pad", None):
            lengths = {c.shape[0] for c in clips}
            if len(lengths) > 1:
                raise InputError(
                    f"padding=False needs clips of equal length, got lengths {sorted(lengths)}; use "
                    "padding='longest' or 'max_length'"
                )
            target = clips[0].shape[0]
        else:
            raise InputError(f"padding must be 'max_length', 'longest', True or False, got {padding!r}")

        clips = [pad_waveform(c, target, pad_mode) for c in clips]
        if target < self.min_length_samples:
            raise InputError(
                f"clips of {target} samples ({target / self.sampling_rate * 1000:.1f} ms) are too short: the "
                f"front end needs at least {self.min_length_samples} samples at {self.sampling_rate} Hz"
            )
        return clips


def _to_mono_float(clip, name: str) -> np.ndarray:
    """One clip of a batch as float32 samples, by the rules of `audio` (PCM scaling, finite, non-empty). A clip
    must be 1-D here: in a batch, a 2-D array is a batch, not channels."""
    clip = pcm_to_float(clip, name)
    if clip.ndim != 1:
        raise InputError(
            f"{name} has shape {clip.shape}; HTS-AT takes mono audio, one 1-D array per clip. For multi-channel "
            "audio downmix it (wave.mean(axis=0) for (channels, samples), wave.mean(axis=1) for (samples, channels)) "
            "or pick one channel (wave[0])."
        )
    return check_waveform(clip, name)


def _as_clip_list(raw_speech) -> list:
    """Split the accepted input forms into a list of per-clip arrays (shape checks happen per clip)."""
    if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
        if raw_speech.ndim == 1:
            return [raw_speech]
        if raw_speech.ndim == 2:
            if raw_speech.shape[1] <= 8 < raw_speech.shape[0]:
                raise InputError(
                    f"input of shape {tuple(raw_speech.shape)} looks like (samples, channels) audio; HTS-AT takes "
                    "mono audio: downmix it with wave.mean(axis=1) or pick one channel with wave[:, 0]. A batch of "
                    "clips is (batch, samples)."
                )
            return list(raw_speech)
        raise InputError(
            f"input has shape {tuple(raw_speech.shape)}; pass one mono clip (samples,) or a batch (batch, samples). "
            "Multi-channel audio must be downmixed (mean over the channel axis) or reduced to one channel first."
        )
    if isinstance(raw_speech, Sequence) and not isinstance(raw_speech, (str, bytes)):
        if len(raw_speech) and isinstance(raw_speech[0], (int, float, np.number)):
            return [np.asarray(raw_speech, dtype=np.float32)]
        return list(raw_speech)
    raise TypeError(
        f"raw_speech must be a numpy array, a torch tensor or a list of them, got {type(raw_speech).__name__}"
    )


__all__ = [
    "HTSATFeatureExtractor",
    "htsat_mel_filters",
    "log_mel_spectrogram",
    "model_max_length_seconds",
    "pad_waveform",
]
