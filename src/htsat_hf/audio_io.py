"""Reading audio files for inference: mono float32 at the model's rate, with errors that name the file.

soundfile reads WAV, FLAC, OGG and MP3 (libsndfile >= 1.1), and can seek, so a part of a long file is read without
the rest. Other formats are decoded by FFmpeg: through torchcodec when it is installed, otherwise through the
`ffmpeg` program (as transformers' audio pipelines do), so inference needs neither torchcodec nor torchaudio.
"""

from os import PathLike
from pathlib import Path

import numpy as np


class AudioReadError(ValueError):
    """An audio file that cannot be used: missing, undecodable, empty, or with NaN/Inf samples; names the file."""


def read_audio(
    path: str | PathLike, sampling_rate: int, start: float = 0.0, seconds: float | None = None
) -> tuple[np.ndarray, int | None]:
    """Decode an audio file (or `seconds` of it from `start`) to mono float32 at `sampling_rate`.

    Returns:
        `(waveform (samples,), the file's own rate)`; the rate is None when the `ffmpeg` program decoded the file,
        since it resamples while decoding.

    Raises:
        AudioReadError: naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such file")
    try:
        import soundfile

        with soundfile.SoundFile(str(path)) as handle:
            native = handle.samplerate
            if start > 0:
                handle.seek(min(int(round(start * native)), handle.frames))
            frames = -1 if seconds is None else int(round(seconds * native))
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
        wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    except Exception as soundfile_error:  # libsndfile's many error types: let FFmpeg try
        wave, native = _decode_with_ffmpeg(path, sampling_rate, soundfile_error)
        rate = native or sampling_rate
        first = int(round(start * rate))
        wave = wave[first:] if seconds is None else wave[first : first + int(round(seconds * rate))]
    if wave.size == 0:
        raise AudioReadError(f"{path}: the audio is empty (0 samples)")
    if not np.all(np.isfinite(wave)):
        raise AudioReadError(f"{path}: the audio has NaN or infinite samples")
    if native is not None and native != sampling_rate:
        from .pipeline_sed import resample

        try:
            wave = resample(wave, native, sampling_rate)
        except ImportError as error:
            raise AudioReadError(f"{path}: {error}") from None
    return np.ascontiguousarray(wave, dtype=np.float32), native


def audio_duration(path: str | PathLike) -> float:
    """Duration in seconds of an audio file from its header (decoding it only when soundfile cannot read it).

    Raises:
        AudioReadError: naming the file when it is missing, undecodable or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such file")
    try:
        import soundfile

        info = soundfile.info(str(path))
        duration = info.frames / info.samplerate
    except Exception as error:  # libsndfile's many error types: let FFmpeg try
        # Any decoding rate gives the duration; a low one keeps the ffmpeg program's output small.
        wave, native = _decode_with_ffmpeg(path, 16000, error)
        duration = wave.size / (native or 16000)
    if duration <= 0:
        raise AudioReadError(f"{path}: the audio is empty (0 samples)")
    return duration


def _decode_with_ffmpeg(path: Path, sampling_rate: int, first_error: Exception) -> tuple[np.ndarray, int | None]:
    """Mono samples and their rate through torchcodec, or at `sampling_rate` (rate None) through the program."""
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        from transformers.pipelines.audio_utils import ffmpeg_read

        try:
            return ffmpeg_read(path.read_bytes(), sampling_rate), None
        except Exception as error:  # a missing program or a file FFmpeg cannot read
            raise AudioReadError(f"{path}: cannot decode audio (soundfile: {first_error}; ffmpeg: {error})") from None
    try:
        samples = AudioDecoder(str(path)).get_all_samples()
    except Exception as error:  # torchcodec raises several types; the user needs the file named
        raise AudioReadError(f"{path}: cannot decode audio (soundfile: {first_error}; FFmpeg: {error})") from None
    data = samples.data.numpy()
    return (data.mean(axis=0) if data.ndim == 2 else data).astype(np.float32), int(samples.sample_rate)


__all__ = ["AudioReadError", "audio_duration", "read_audio"]
