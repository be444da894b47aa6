"""The one audio input layer: every entry point (the feature extractor, both pipelines, `htsat-hf predict`,
`run_sed.py`, training data) turns what a user gives into mono float32 samples here, with the same rules and the
same errors.

Forms of audio ([`load_waveform`]):

| form | rate | channels |
| --- | --- | --- |
| a path (`str` or `PathLike`) | the file's, resampled to the model's | downmixed (mean) |
| `bytes` (an encoded file) | the file's, resampled | downmixed |
| a numpy array, torch tensor or list of numbers | taken to be the model's | 1-D, or 2-D with one channel |
| `{"raw" or "array": samples, "sampling_rate": rate}` (transformers' pipelines, decoded `datasets` values) | `rate`, resampled | as arrays |
| `{"path": ..., "bytes": ...}` (undecoded `datasets` values) | the file's, resampled | downmixed |
| a torchcodec `AudioDecoder` (`datasets` >= 4 decoded values) | its own, resampled | downmixed |

Samples: float in [-1, 1], or integer PCM (int8, uint8, int16, int32), scaled by the format's full scale as
soundfile and the WAV format define it (uint8 is offset by 128). Float samples that are obviously unscaled integer
PCM (whole numbers with a peak above 2, or any peak above 64: int16 cast to float peaks near 32767) are refused:
they would shift the log-mel by about 90 dB and silently ruin every score.

Files are read by soundfile (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1, with seeking, so part of a long file is read
without the rest); other formats by FFmpeg, through torchcodec when installed, else through the `ffmpeg` program (as
transformers' audio pipelines do), so inference needs neither torchcodec nor torchaudio. Resampling uses torchaudio
(as transformers' pipelines do); without it, audio at another rate is refused with a message saying so.
[`stream_audio`] gives the same samples a block at a time, so that a file of any duration is read in bounded memory.

Every problem is an [`InputError`] whose message names the file (or `name`).
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm",
)
# The rate at which durations are counted when a file must be decoded to know its length.
_COUNTING_RATE = 16000
# Fewest input samples resampled per call when a file is streamed.
_MIN_RESAMPLED_CHUNK = 1 << 16
# Full scale of integer PCM: the divisor that maps the format's range to [-1, 1) (libsndfile's convention).
PCM_FULL_SCALE = {
    np.dtype(np.int8): 128.0,
    np.dtype(np.int16): 32768.0,
    np.dtype(np.int32): 2147483648.0,
}
# 8-bit WAV is unsigned with silence at 128.
_UINT8_OFFSET = 128.0
# Float audio above these peaks is not [-1, 1] audio: whole numbers past 2 are integer PCM cast to float, and no
# float recording of a real scene peaks at 64x full scale.
UNSCALED_INTEGER_PEAK = 2.0
UNSCALED_FLOAT_PEAK = 64.0


# --------------------------------------------------------------------------------------------------------- samples


def pcm_to_float(samples, name: str = "the audio") -> np.ndarray:
    """Samples of any accepted dtype as float32 in [-1, 1].

    Args:
        samples: numpy array or torch tensor of any shape; float, or integer PCM (int8, uint8, int16, int32).
        name: how messages name the audio (a file name, "clip 3").

    Returns:
        float32 array of the same shape.

    Raises:
        InputError: another dtype (bool, int64, complex, object), or float samples that are obviously unscaled
            integer PCM (see the module docstring).
    """
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        samples = samples.float().numpy() if samples.dtype in (torch.bfloat16, torch.float16) else samples.numpy()
    samples = np.asarray(samples)
    if samples.dtype in PCM_FULL_SCALE:
        return (samples.astype(np.float64) / PCM_FULL_SCALE[samples.dtype]).astype(np.float32)
    if samples.dtype == np.uint8:
        return ((samples.astype(np.float64) - _UINT8_OFFSET) / _UINT8_OFFSET).astype(np.float32)
    if not np.issubdtype(samples.dtype, np.floating):
        raise InputError(
            f"{name}: samples of dtype {samples.dtype} are not audio; pass float samples in [-1, 1] or integer PCM "
            "(int8, uint8, int16, int32)"
        )
    samples = samples.astype(np.float32, copy=False)
    if samples.size:
        finite = samples[np.isfinite(samples)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        if peak > UNSCALED_FLOAT_PEAK or (peak > UNSCALED_INTEGER_PEAK and np.array_equal(finite, np.round(finite))):
            raise InputError(
                f"{name}: float samples peak at {peak:g}, so they look like integer PCM that was cast to float "
                "without scaling; pass the integer array itself (int16/int32 are scaled), or divide by 32768 for "
                "16-bit audio (2147483648 for 32-bit)"
            )
    return samples


def check_waveform(waveform: np.ndarray, name: str = "the audio", block_start: int | None = None) -> np.ndarray:
    """Refuse empty audio and NaN/Inf samples; returns `waveform` as contiguous float32.

    Args:
        waveform: `(samples,)` audio.
        name: how messages name the audio.
        block_start: when `waveform` is one block of a longer stream, the index of its first sample in the whole
            audio, so that messages point into the file rather than into the block.

    Raises:
        InputError: naming `name`.
    """
    if waveform.size == 0:
        raise InputError(f"{name}: the audio is empty (0 samples)")
    finite = np.isfinite(waveform)
    if not finite.all():
        bad, first = int((~finite).sum()), int(np.argmin(finite))
        where = "" if block_start is None else f" in samples {block_start}-{block_start + waveform.size - 1}"
        raise InputError(
            f"{name}: the audio has {bad} NaN or infinite samples{where} (first at sample "
            f"{first + (block_start or 0)}); clean or drop it"
        )
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _mono_array(samples: np.ndarray, name: str) -> np.ndarray:
    """A 1-D array from an in-memory array: one channel may be given as `(1, n)` or `(n, 1)`; more are refused,
    since the channel axis of an in-memory array cannot be told apart from a batch axis."""
    if samples.ndim == 0:
        raise InputError(f"{name}: got a single number, not a sequence of samples")
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise InputError(
            f"{name}: got samples of shape {tuple(samples.shape)}, but HTS-AT takes mono audio; downmix it "
            "(wave.mean(axis=0) for (channels, samples), wave.mean(axis=1) for (samples, channels)) or pick a channel"
        )
    return samples


def _downmix(samples: np.ndarray, channel_axis: int) -> np.ndarray:
    return samples.mean(axis=channel_axis) if samples.ndim == 2 else samples.reshape(-1)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int, name: str = "the audio") -> np.ndarray:
    """`(samples,)` float32 audio from `orig_sr` to `target_sr` Hz with torchaudio's windowed-sinc resampler (its
    defaults, as transformers' audio pipelines use).

    Raises:
        InputError: torchaudio is not installed, or a rate is not a positive number.
    """
    orig_sr = _check_rate(orig_sr, name)
    if orig_sr == target_sr:
        return waveform
    try:
        from torchaudio.functional import resample as torchaudio_resample
    except ImportError:
        raise InputError(
            f"{name}: audio at {orig_sr} Hz must be resampled to the model's {target_sr} Hz: install torchaudio "
            "(pip install 'htsat-hf[audio]'), or resample it yourself"
        ) from None
    tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    return torchaudio_resample(tensor, orig_sr, int(target_sr)).numpy()


def _check_rate(rate, name: str) -> int:
    """`rate` as an int, refusing what is not a positive whole number of Hz (a string, 0, 22050.5, NaN, True)."""
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: sampling_rate must be a positive whole number of Hz, got {rate!r}")
    if not (np.isfinite(rate) and float(rate).is_integer() and rate > 0):
        raise InputError(f"{name}: sampling_rate must be a positive whole number of Hz, got {rate!r}")
    return int(rate)


# ----------------------------------------------------------------------------------------------------------- files


def read_audio(
    path: str | PathLike, sampling_rate: int, start: float = 0.0, seconds: float | None = None
) -> tuple[np.ndarray, int | None]:
    """Decode an audio file (or `seconds` of it from `start`, in seconds) to mono float32 at `sampling_rate`.

    Returns:
        `(waveform (samples,), the file's own rate)`; the rate is None when the `ffmpeg` program decoded the file,
        since it resamples while decoding.

    Raises:
        InputError: naming the file when it is missing, a folder, undecodable, empty, or has NaN/Inf samples.
    """
    path = _existing_file(path)
    try:
        import soundfile

        with soundfile.SoundFile(str(path)) as handle:
            truncated = _truncation(handle)
            native = handle.samplerate
            if start > 0:
                handle.seek(min(int(round(start * native)), handle.frames))
            frames = -1 if seconds is None else int(round(seconds * native))
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
        wave = _downmix(data, channel_axis=1)
    except Exception as soundfile_error:  # libsndfile's many error types (and no soundfile): let FFmpeg try
        truncated = None
        wave, native = _decode_with_ffmpeg(path, sampling_rate, soundfile_error, str(path))
        rate = native or sampling_rate
        first = int(round(start * rate))
        wave = wave[first:] if seconds is None else wave[first : first + int(round(seconds * rate))]
    if truncated is not None:  # raised here, not in the try: FFmpeg must not read the cut file instead
        raise InputError(f"{path}: {truncated}")
    wave = check_waveform(wave, str(path))
    if native is not None:
        wave = resample(wave, native, sampling_rate, str(path))
    return np.ascontiguousarray(wave, dtype=np.float32), native


def audio_duration(source: str | PathLike | bytes, name: str | None = None) -> float:
    """Duration in seconds of an audio file (a path, or its bytes) from its header, without decoding it.

    Files soundfile reads (WAV, FLAC, OGG, MP3) give it from their header; other paths from the container's header
    through the `ffprobe` program (FFmpeg's own estimate, so within a frame of the decoded length); only a path
    without such a header (or without ffprobe) is decoded, in blocks, and bytes soundfile cannot read are decoded
    whole.

    Raises:
        InputError: naming the file (or `name`) when it is missing, undecodable or empty.
    """
    if isinstance(source, (bytes, bytearray)):
        source, name = bytes(source), name or "the audio bytes"
        opened = io.BytesIO(source)
    else:
        source = _existing_file(source)
        name, opened = name or str(source), str(source)
    try:
        import soundfile

        info = soundfile.info(opened)
        duration = info.frames / info.samplerate
    except Exception as error:  # libsndfile's many error types: let FFmpeg try
        duration = _probe_duration(source) if isinstance(source, Path) else None
        if duration is None and isinstance(source, Path):
            # No header to read: count the samples, decoding in blocks so that memory stays flat. Any rate gives
            # the duration; a low one keeps the decoded samples few.
            blocks = _stream_with_ffmpeg(source, _COUNTING_RATE, 60 * _COUNTING_RATE, error, name)
            duration = sum(block.size for block in blocks) / _COUNTING_RATE
        elif duration is None:
            wave, native = _decode_with_ffmpeg(source, _COUNTING_RATE, error, name)
            duration = wave.size / (native or _COUNTING_RATE)
    if duration <= 0:
        raise InputError(f"{name}: the audio is empty (0 samples)")
    return duration


def _probe_duration(path: Path) -> float | None:
    """The duration in seconds that the container's header gives, through the `ffprobe` program; None without the
    program, or when FFmpeg cannot read the file or finds no duration in it (a raw AAC stream, for one)."""
    if shutil.which("ffprobe") is None:
        return None
    command = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    try:
        duration = float(result.stdout.strip())
    except ValueError:  # "N/A", or nothing when FFmpeg cannot read the file
        return None
    return duration if result.returncode == 0 and math.isfinite(duration) and duration > 0 else None


def _existing_file(path: str | PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        # Said here: the decoders would only report a format they do not recognise.
        raise InputError(f"{path}: the file is empty (0 bytes)")
    return path


def _decode_with_ffmpeg(
    source: Path | bytes, sampling_rate: int, first_error: Exception, name: str
) -> tuple[np.ndarray, int | None]:
    """Mono samples and their rate through torchcodec, or at `sampling_rate` (rate None) through the program."""
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        from transformers.pipelines.audio_utils import ffmpeg_read

        try:
            data = source if isinstance(source, bytes) else source.read_bytes()
            return ffmpeg_read(data, sampling_rate), None
        except Exception as error:  # a missing program or a file FFmpeg cannot read
            raise InputError(
                f"{name}: cannot decode audio (soundfile: {_one_line(first_error)}; ffmpeg: {_one_line(error)})"
            ) from None
    try:
        samples = AudioDecoder(source if isinstance(source, bytes) else str(source)).get_all_samples()
    except Exception as error:  # torchcodec raises several types; the user needs the file named
        raise InputError(
            f"{name}: cannot decode audio (soundfile: {_one_line(first_error)}; FFmpeg: {_one_line(error)})"
        ) from None
    return _downmix(samples.data.numpy(), channel_axis=0).astype(np.float32), int(samples.sample_rate)


def _decode_bytes(data: bytes, sampling_rate: int, name: str) -> np.ndarray:
    try:
        import soundfile

        samples, native = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        wave = _downmix(samples, channel_axis=1)
    except Exception as soundfile_error:  # libsndfile's many error types: let FFmpeg try
        wave, native = _decode_with_ffmpeg(data, sampling_rate, soundfile_error, name)
    wave = check_waveform(wave, name)
    return wave if native is None else resample(wave, native, sampling_rate, name)


# libsndfile's log of a WAV (or AIFF) whose data chunk is shorter than its header says: it reads what is there and
# reports that length as the file's frames, so the cut shows only in this line of the log.
_SHORT_DATA = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_BLOCK_ALIGN = re.compile(r"^\s*Block Align\s*:\s*(\d+)", re.MULTILINE)
# Sizes that recorders write while the length is unknown (a stream), not a claim about the length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def _truncation(handle) -> str | None:
    """`"truncated: header says ... s, data holds ... s"` when an open soundfile's header promises more audio than
    the file holds (a copy cut short), else None."""
    try:
        log = handle.extra_info
    except Exception:  # an old soundfile without the log: the check is skipped
        return None
    short = _SHORT_DATA.search(log)
    if short is None or int(short.group(1)) in _UNKNOWN_SIZES:
        return None
    declared, present = int(short.group(1)), int(short.group(2))
    if declared <= present:
        return None
    align = _BLOCK_ALIGN.search(log)
    frame_bytes = int(align.group(1)) if align else max(1, round(present / max(handle.frames, 1)))
    rate = handle.samplerate
    return (f"truncated: header says {declared // frame_bytes / rate:.3f} s, data holds "
            f"{handle.frames / rate:.3f} s")


# Decoder internals in library messages that tell the user nothing: torchcodec's "SingleStreamDecoder,
# /__w/torchcodec/.../SingleStreamDecoder.cpp:51," source locations, and its "This should never happen. Please report
# an issue ..." boilerplate (a file it cannot read is not a torchcodec bug).
_SOURCE_LOCATION = re.compile(r"(?:\b\w+,\s*)?\S*/\S+\.(?:cpp|cc|cxx|c|h|hpp):\d+,?\s*")
_BOILERPLATE = re.compile(r"This should never happen\.?\s*|Please report (?:an issue|a bug|this)\b"
                         r"(?:<[^>]*>|https?://[^\s>]*[^\s>.]|[^<.])*\.?\s*",
                          re.IGNORECASE)


def _one_line(error: BaseException | str) -> str:
    """A library's error as one line, without its source locations and bug-report boilerplate."""
    text = _BOILERPLATE.sub("", _SOURCE_LOCATION.sub("", str(error)))
    return " ".join(text.split()).rstrip(" ,;") or type(error).__name__


# ------------------------------------------------------------------------------------------------ any form of audio


def load_waveform(audio, sampling_rate: int, name: str | None = None) -> np.ndarray:
    """Mono float32 samples at `sampling_rate` from any accepted form of audio (see the module docstring).

    Args:
        audio: a path, bytes, an array/tensor/list of samples at `sampling_rate`, a `{"raw"|"array",
            "sampling_rate"}` or `{"path", "bytes"}` dict, or a torchcodec `AudioDecoder`.
        sampling_rate: the model's rate in Hz.
        name: how errors name the audio (default: its path, or "the audio").

    Returns:
        `(samples,)` float32, finite, non-empty. Float32 arrays that need no change may be returned as they are
        (not copied).

    Raises:
        InputError: one line naming the audio, for a form it does not take, a missing or undecodable file, a
            folder, multi-channel arrays, empty audio, NaN/Inf samples, unscaled PCM, or a dict without its rate.
    """
    if isinstance(audio, (str, PathLike)):
        return read_audio(audio, sampling_rate)[0]
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(audio), sampling_rate, name or "the audio bytes")
    if isinstance(audio, dict):
        return _waveform_from_dict(audio, sampling_rate, name)
    if hasattr(audio, "get_all_samples"):  # torchcodec's AudioDecoder, as datasets >= 4 decodes audio
        # datasets records the file on the decoder's metadata.
        name = name or str(getattr(getattr(audio, "metadata", None), "path", None) or "the decoded audio")
        try:
            samples = audio.get_all_samples()
        except Exception as error:  # torchcodec raises several types; name the audio instead
            raise InputError(f"{name}: cannot decode audio ({_one_line(error)})") from None
        wave = check_waveform(_downmix(samples.data.numpy(), channel_axis=0), name)
        return resample(wave, int(samples.sample_rate), sampling_rate, name)
    name = name or "the audio"
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return check_waveform(_mono_array(pcm_to_float(audio, name), name), name)
    if isinstance(audio, Sequence) and all(isinstance(x, (int, float, np.number)) for x in audio[:16]):
        return check_waveform(_mono_array(pcm_to_float(np.asarray(audio, dtype=np.float32), name), name), name)
    raise InputError(
        f"{name}: cannot read audio from a {type(audio).__name__}; give a file path, a numpy array or torch tensor "
        "of samples, or a {'raw': samples, 'sampling_rate': rate} dict"
    )


def _waveform_from_dict(audio: dict, sampling_rate: int, name: str | None) -> np.ndarray:
    samples = audio.get("raw")
    samples = audio.get("array") if samples is None else samples
    name = name or str(audio.get("path") or "the audio")
    if samples is not None:
        if audio.get("sampling_rate") is None:
            raise InputError(f'{name}: a dict of samples needs its "sampling_rate" besides "raw" (or "array")')
        rate = _check_rate(audio["sampling_rate"], name)
        return resample(load_waveform(samples, sampling_rate=rate, name=name), rate, sampling_rate, name)
    if audio.get("bytes") is not None:
        return _decode_bytes(bytes(audio["bytes"]), sampling_rate, name)
    if audio.get("path") is not None:
        return read_audio(audio["path"], sampling_rate)[0]
    raise InputError(
        f"{name}: a dict input needs \"raw\" (or \"array\") with \"sampling_rate\", or \"path\"/\"bytes\"; got keys "
        f"{sorted(map(str, audio))}"
    )


# --------------------------------------------------------------------------------------------------- audio in blocks


def stream_audio(source, sampling_rate: int, block_samples: int, name: str | None = None) -> Iterator[np.ndarray]:
    """Mono float32 blocks of any accepted form of audio at `sampling_rate`, reading a file a block at a time, so
    that memory is bounded by the block size whatever the file's duration.

    The blocks, concatenated, are the audio [`load_waveform`] returns:
    - Files soundfile reads (WAV, FLAC, OGG, MP3): read in blocks, downmixed (mean of the channels) and resampled
      block by block, equal to the whole file's [`resample`] within float rounding (about 1e-7). torchaudio's
      windowed-sinc resampler is local: each period of `orig / gcd` input samples gives `new / gcd` output samples
      from a kernel that reads a fixed number of input samples either side (its `width`, about 6.1 periods of the
      lower rate with torchaudio's defaults). So each stretch of output is resampled from its input plus at least
      `width` context samples either side, starting at a period boundary, which makes the kernel see exactly the
      samples (and, at the file's ends, the zero padding) it sees in the whole file; the context's output is cut.
    - Other formats (M4A, AAC, WMA, WebM, ...): decoded by the `ffmpeg` program into a pipe (`-f f32le`), read a
      block at a time, decoded as `load_waveform` decodes the whole file: with torchcodec installed, at the file's
      rate with all its channels, averaged and block-resampled as above (FFmpeg's decoder in both, so the samples
      match within float rounding); without torchcodec, mixed and resampled by FFmpeg (`-ac 1 -ar RATE`, the
      command transformers' `ffmpeg_read` runs on the whole file, so the samples are the same). Without the
      `ffmpeg` program the file is decoded whole (through torchcodec) and then cut into blocks.
    - Bytes and in-memory forms (arrays, tensors, dicts of samples, torchcodec decoders): decoded whole by
      `load_waveform`, then cut into blocks, which may be views of one array.

    A streamed file holds about two blocks of samples at a time (one being cut, one read), plus, when it is
    resampled, the resampler's context and at least `_MIN_RESAMPLED_CHUNK` (64k) input samples per call.

    Args:
        source: any form [`load_waveform`] takes; a path (or a `{"path": ...}` dict without bytes) is streamed.
        sampling_rate: the model's rate in Hz.
        block_samples: samples per block (at `sampling_rate`).
        name: how errors name the audio (default: its path, or "the audio").

    Returns:
        An iterator of `(block_samples,)` float32 blocks, the last `(1..block_samples,)`; finite, at least one.

    Raises:
        InputError: one line naming the audio. When this is called: `block_samples` is not a positive whole
            number, the file is missing or a folder, or an in-memory form is refused as `load_waveform` refuses it.
            While iterating, before the first block: a file that cannot be decoded or is empty, or resampling
            needed without torchaudio. At the block where it is met: NaN/Inf samples (with their position in the
            file) or a decoding failure part-way through.
    """
    whole = isinstance(block_samples, (int, np.integer)) and not isinstance(block_samples, (bool, np.bool_))
    if not whole or block_samples <= 0:
        raise InputError(f"block_samples must be a positive whole number of samples, got {block_samples!r}")
    block_samples = int(block_samples)
    path = _streamable_path(source)
    if path is None:
        waveform = load_waveform(source, sampling_rate, name)
        return (waveform[start : start + block_samples] for start in range(0, waveform.shape[0], block_samples))
    path = _existing_file(path)
    return _exact_blocks(_stream_file(path, sampling_rate, block_samples, name or str(path)), block_samples)


def _streamable_path(source) -> str | PathLike | None:
    """The file to stream `source` from: a path, or the path of an undecoded `datasets` value without its bytes."""
    if isinstance(source, (str, PathLike)):
        return source
    if isinstance(source, dict) and all(source.get(key) is None for key in ("raw", "array", "bytes")):
        return source.get("path")
    return None


def _stream_file(path: Path, sampling_rate: int, block_samples: int, name: str) -> Iterator[np.ndarray]:
    """Checked mono chunks of the file at `sampling_rate`, of about `block_samples` each."""
    try:
        import soundfile

        handle = soundfile.SoundFile(str(path))
    except Exception as soundfile_error:  # libsndfile's many error types (and no soundfile): let FFmpeg try
        yield from _stream_with_ffmpeg(path, sampling_rate, block_samples, soundfile_error, name)
        return
    with handle:
        truncated = _truncation(handle)
        if truncated is not None:
            raise InputError(f"{name}: {truncated}")
        native = handle.samplerate
        if native == sampling_rate:
            yield from _read_chunks(handle, block_samples, name)
            return
        # Input chunks that give about one output block each, but not tiny ones: each resampling call builds
        # torchaudio's kernel and re-reads the context, which small blocks would pay for many times over.
        frames = max(_MIN_RESAMPLED_CHUNK, math.ceil(block_samples * native / sampling_rate))
        yield from _resample_chunks(_read_chunks(handle, frames, name), native, sampling_rate, name)


def _read_chunks(handle, frames: int, name: str) -> Iterator[np.ndarray]:
    """Checked mono chunks of `frames` samples (the last shorter) at the file's rate, from an open SoundFile."""
    position = 0
    while True:
        try:
            data = handle.read(frames=frames, dtype="float32", always_2d=True)
        except Exception as error:  # a file damaged part-way; libsndfile raises several types
            raise InputError(f"{name}: cannot decode audio at sample {position} ({_one_line(error)})") from None
        if data.shape[0] == 0:
            if position == 0:
                check_waveform(data[:, 0], name)  # raises: the file holds no samples
            return
        yield check_waveform(_downmix(data, channel_axis=1), name, block_start=position)
        position += data.shape[0]


def _resample_chunks(chunks: Iterable[np.ndarray], orig_sr: int, target_sr: int, name: str) -> Iterator[np.ndarray]:
    """Chunks of `chunks`' concatenation resampled from `orig_sr` to `target_sr`, equal to [`resample`] of the
    whole within float rounding (see [`stream_audio`]).

    Output is made in whole periods: output frame `f` (samples `f * new ... f * new + new - 1`, with `orig`/`new`
    the rates divided by their gcd) reads input samples `f * orig - width ... f * orig + orig + width - 1`, zero
    outside the audio. A stretch of frames is resampled from an input slice starting `context` (>= width, a whole
    number of periods) before its first frame, or at 0, and ending `context` after its last frame, or at the end.
    """
    gcd = math.gcd(orig_sr, target_sr)
    orig, new = orig_sr // gcd, target_sr // gcd
    # torchaudio's kernel width with its defaults (lowpass_filter_width=6, rolloff=0.99), rounded up to periods.
    width = math.ceil(6 * orig / (0.99 * min(orig, new)))
    context = orig * math.ceil(width / orig)
    held = np.zeros(0, dtype=np.float32)  # input samples from index `held_start` on
    held_start = done = 0  # `done`: output frames already yielded

    def stretch(end_frame: int | None) -> np.ndarray:
        """Output frames `done ... end_frame - 1` (to the end of the audio when None), from `held`."""
        start = max(0, done * orig - context)
        stop = None if end_frame is None else end_frame * orig + context - held_start
        resampled = resample(held[start - held_start : stop], orig_sr, target_sr, name)
        first = (done * orig - start) // orig * new
        return resampled[first:] if end_frame is None else resampled[first : first + (end_frame - done) * new]

    for chunk in chunks:
        held = np.concatenate([held, chunk])
        end_frame = (held_start + held.size - context) // orig  # the last frame whose right context is held, + 1
        if end_frame > done:
            yield stretch(end_frame)
            done = end_frame
            keep_from = max(0, done * orig - context)
            held, held_start = held[keep_from - held_start :], keep_from
    if held.size:
        tail = stretch(None)
        if tail.size:
            yield tail


def _stream_with_ffmpeg(
    path: Path, sampling_rate: int, chunk_samples: int, first_error: Exception, name: str
) -> Iterator[np.ndarray]:
    """Checked mono chunks at `sampling_rate` of about `chunk_samples`, decoded by the `ffmpeg` program into a pipe
    as [`_decode_with_ffmpeg`] would decode the whole file: with torchcodec, at the file's rate with every channel,
    averaged and resampled here; without it, mixed to mono and resampled by FFmpeg (transformers' `ffmpeg_read`).
    Without the program the file is decoded whole."""
    if shutil.which("ffmpeg") is None:
        wave, native = _decode_with_ffmpeg(path, sampling_rate, first_error, name)
        wave = check_waveform(wave, name)
        yield wave if native is None else resample(wave, native, sampling_rate, name)
        return
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        options = ["-ac", "1", "-ar", str(sampling_rate)]
        yield from _ffmpeg_chunks(path, options, 1, chunk_samples, first_error, name)
        return
    try:
        metadata = AudioDecoder(str(path)).metadata  # the header only
        native, channels = int(metadata.sample_rate), int(metadata.num_channels)
    except Exception as error:  # torchcodec raises several types; the user needs the file named
        raise InputError(
            f"{name}: cannot decode audio (soundfile: {_one_line(first_error)}; FFmpeg: {_one_line(error)})"
        ) from None
    if native == sampling_rate:
        yield from _ffmpeg_chunks(path, [], channels, chunk_samples, first_error, name)
        return
    frames = max(_MIN_RESAMPLED_CHUNK, math.ceil(chunk_samples * native / sampling_rate))
    chunks = _ffmpeg_chunks(path, [], channels, frames, first_error, name)
    yield from _resample_chunks(chunks, native, sampling_rate, name)


def _ffmpeg_chunks(
    path: Path, options: list[str], channels: int, frames: int, first_error: Exception, name: str
) -> Iterator[np.ndarray]:
    """Checked mono chunks of `frames` samples (the last shorter) that `ffmpeg -i path OPTIONS -f f32le` writes,
    `channels` interleaved channels averaged."""
    # `-vn` skips a video stream (WebM, MP4 with a picture).
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-vn", *options,
        "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    frame_bytes = 4 * channels
    # FFmpeg's messages go to a file, not a pipe: a pipe nobody reads until the end could fill and stall it.
    with tempfile.TemporaryFile() as messages:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=messages, stdin=subprocess.DEVNULL) as process:
            position = 0
            try:
                while data := process.stdout.read(frame_bytes * frames):
                    samples = np.frombuffer(data[: len(data) - len(data) % frame_bytes], dtype="<f4")
                    chunk = _downmix(samples.reshape(-1, channels), channel_axis=1)
                    yield check_waveform(chunk, name, block_start=position)
                    position += chunk.size
            finally:  # also when the caller stops early: FFmpeg must not outlive the iterator
                if process.poll() is None:
                    process.kill()
            status = process.wait()
        if status != 0:
            messages.seek(0)
            error = _one_line(messages.read().decode(errors="replace")) or f"exit status {status}"
            raise InputError(f"{name}: cannot decode audio (soundfile: {_one_line(first_error)}; ffmpeg: {error})")
    if position == 0:
        check_waveform(np.zeros(0, np.float32), name)  # raises: FFmpeg decoded no samples


def _exact_blocks(chunks: Iterable[np.ndarray], block_samples: int) -> Iterator[np.ndarray]:
    """`chunks`' concatenation cut into blocks of `block_samples`, the last shorter (not empty)."""
    pending, held = [], 0
    for chunk in chunks:
        pending.append(chunk)
        held += chunk.size
        if held >= block_samples:
            joined = pending[0] if len(pending) == 1 else np.concatenate(pending)
            whole = held - held % block_samples
            for start in range(0, whole, block_samples):
                yield joined[start : start + block_samples]
            pending, held = ([joined[whole:]] if held > whole else []), held - whole
    if held:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


__all__ = [
    "AUDIO_EXTENSIONS",
    "PCM_FULL_SCALE",
    "audio_duration",
    "check_waveform",
    "load_waveform",
    "pcm_to_float",
    "read_audio",
    "resample",
    "stream_audio",
]
