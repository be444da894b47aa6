"""The one audio input layer (`htsat_hf.audio`): every form of audio a user may give, and every refusal, each an
`InputError` of one line naming the audio.

References are independent of the code under test: soundfile's reading of the same file (libsndfile's integer PCM
scaling), torchaudio's resampler (what transformers' pipelines use), and torchcodec's decoder.
"""

import io
import shutil
import subprocess
import sys
import tracemalloc
import wave

import numpy as np
import pytest
import soundfile
import torch

from htsat_hf import audio
from htsat_hf.audio import (
    AUDIO_EXTENSIONS,
    audio_duration,
    check_waveform,
    load_waveform,
    pcm_to_float,
    read_audio,
    resample,
    stream_audio,
)
from htsat_hf.errors import InputError

SR = 32000


def tone(seconds=1.0, rate=SR, frequency=440.0, amplitude=0.5, seed=0):
    t = np.arange(int(round(seconds * rate))) / rate
    noise = 0.01 * np.random.default_rng(seed).standard_normal(t.shape)
    return (amplitude * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


def refused(audio, match, sampling_rate=SR, **kwargs) -> str:
    """The message of the InputError that `load_waveform` raises; it must be one line."""
    with pytest.raises(InputError, match=match) as error:
        load_waveform(audio, sampling_rate, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def torchaudio_resample(waveform, orig, target):
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(waveform), orig, target).numpy()


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


# --------------------------------------------------------------------------------------------------------------------
# Integer PCM: the scaling libsndfile applies when it reads the same file as float
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subtype,dtype", [("PCM_16", "int16"), ("PCM_32", "int32")])
def test_int16_and_int32_are_scaled_as_soundfile_reads_the_wav(tmp_path, subtype, dtype):
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, tone(), SR, subtype=subtype)
    pcm, _ = soundfile.read(path, dtype=dtype)
    as_float, _ = soundfile.read(path, dtype="float32")
    assert pcm.dtype == np.dtype(dtype) and np.abs(pcm).max() > 1000
    np.testing.assert_array_equal(pcm_to_float(pcm), as_float)
    np.testing.assert_array_equal(load_waveform(pcm, SR), as_float)
    np.testing.assert_array_equal(load_waveform(torch.from_numpy(pcm), SR), as_float)
    np.testing.assert_array_equal(load_waveform({"array": pcm, "sampling_rate": SR}, SR), as_float)


def test_uint8_is_offset_and_scaled_as_soundfile_reads_an_8_bit_wav(tmp_path):
    path = tmp_path / "u8.wav"
    soundfile.write(path, tone(), SR, subtype="PCM_U8")
    with wave.open(str(path)) as handle:  # 8-bit WAV stores unsigned bytes, silence at 128
        assert handle.getsampwidth() == 1
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.uint8)
    as_float, _ = soundfile.read(path, dtype="float32")
    np.testing.assert_array_equal(pcm_to_float(pcm), as_float)
    np.testing.assert_array_equal(load_waveform(pcm, SR), as_float)
    np.testing.assert_array_equal(pcm_to_float(np.array([0, 128, 255], dtype=np.uint8)), [-1.0, 0.0, 127 / 128])


def test_int8_is_scaled_as_soundfile_reads_signed_8_bit_pcm(tmp_path):
    path = tmp_path / "s8.raw"  # WAV has no signed 8-bit format; raw PCM_S8 is the same samples without a header
    soundfile.write(path, tone(), SR, format="RAW", subtype="PCM_S8")
    pcm = np.fromfile(path, dtype=np.int8)
    as_float, _ = soundfile.read(path, samplerate=SR, channels=1, format="RAW", subtype="PCM_S8", dtype="float32")
    np.testing.assert_array_equal(pcm_to_float(pcm), as_float)
    np.testing.assert_array_equal(load_waveform(torch.from_numpy(pcm), SR), as_float)


def test_half_scale_int16_in_a_dict_is_scaled_not_cast():
    # The bug this layer replaces: {"array": int16} was cast to float, so a half-scale sine peaked at 15999.
    pcm = np.round(16000 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.int16)
    waveform = load_waveform({"array": pcm, "sampling_rate": SR}, SR)
    assert waveform.dtype == np.float32
    assert waveform.max() == pytest.approx(16000 / 32768)


def test_float_samples_that_are_unscaled_pcm_are_refused():
    pcm = (tone() * 32767).astype(np.int16)
    message = refused(pcm.astype(np.float32), r"float samples peak at \d+, so they look like integer PCM")
    assert "the audio" in message and "32768" in message
    refused(torch.from_numpy(pcm.astype(np.float64)), "look like integer PCM")
    refused({"array": pcm.astype(np.float32), "sampling_rate": SR}, "look like integer PCM")
    # Not whole numbers, but far beyond any float recording's range.
    refused(tone() * 1000, "float samples peak at")
    # Loud float audio that is still plausibly float passes: peaks a little above 1, or whole numbers up to 2.
    load_waveform(tone(amplitude=1.5), SR)
    load_waveform(np.array([0.0, 1.0, -2.0, 2.0] * 1000, dtype=np.float32), SR)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.bool_, np.complex64])
def test_other_dtypes_are_refused(dtype):
    refused(np.zeros(1000, dtype=dtype), f"the audio: samples of dtype {np.dtype(dtype)} are not audio")


def test_half_precision_tensors_and_lists_are_read_as_float():
    clip = tone()
    np.testing.assert_allclose(load_waveform(torch.from_numpy(clip).to(torch.bfloat16), SR), clip, atol=4e-3)
    np.testing.assert_array_equal(load_waveform(clip.tolist(), SR), clip)


# --------------------------------------------------------------------------------------------------------------------
# Shapes and sample values
# --------------------------------------------------------------------------------------------------------------------


def test_one_channel_given_as_two_dimensions_is_accepted():
    clip = tone()
    np.testing.assert_array_equal(load_waveform(clip[None, :], SR), clip)
    np.testing.assert_array_equal(load_waveform(clip[:, None], SR), clip)
    np.testing.assert_array_equal(load_waveform(torch.from_numpy(clip)[None, :], SR), clip)


def test_several_channels_are_refused_with_the_downmix_hint():
    stereo = np.stack([tone(), tone(frequency=880.0)])
    message = refused(stereo, r"got samples of shape \(2, 32000\), but HTS-AT takes mono audio")
    assert "wave.mean(axis=0)" in message and "wave.mean(axis=1)" in message
    refused(stereo.T, r"shape \(32000, 2\)")
    refused({"array": stereo, "sampling_rate": SR}, r"shape \(2, 32000\)", name="clip 7")
    refused(np.zeros((1, 2, 100), np.float32), r"shape \(1, 2, 100\)")
    refused(np.array(0.5, dtype=np.float32), "a single number, not a sequence of samples")
    refused(np.float32(0.5), "cannot read audio from a float32")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_the_first(bad):
    clip = tone()
    clip[[1234, 2000]] = bad
    refused(clip, r"clip 3: the audio has 2 NaN or infinite samples \(first at sample 1234\)", name="clip 3")
    with pytest.raises(InputError, match="NaN"):
        check_waveform(clip)


def test_empty_audio_is_refused(tmp_path):
    refused(np.zeros(0, np.float32), r"the audio: the audio is empty \(0 samples\)")
    refused([], "empty")
    refused({"raw": np.zeros(0, np.int16), "sampling_rate": SR}, "empty")
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), SR)
    refused(str(path), f"{path}: the audio is empty")


def test_a_form_it_does_not_take_is_refused():
    refused({1, 2, 3}, "cannot read audio from a set")
    refused(["a.wav", "b.wav"], "cannot read audio from a list")
    refused(
        {"samples": [0.1]},
        r"a dict input needs \"raw\" \(or \"array\"\) with \"sampling_rate\", or \"path\"/\"bytes\"; "
        r"got keys \['samples'\]",
    )


# --------------------------------------------------------------------------------------------------------------------
# Dicts with their rate: resampled with torchaudio, as transformers' pipelines do
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["raw", "array"])
def test_a_dict_at_another_rate_is_resampled_as_torchaudio_does(key):
    clip16 = tone(rate=16000, seed=1)
    waveform = load_waveform({key: clip16, "sampling_rate": 16000}, SR)
    expected = torchaudio_resample(clip16, 16000, SR)
    assert waveform.shape == (2 * clip16.shape[0],) and waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform, expected)
    # At the model's rate the samples are used as they are.
    np.testing.assert_array_equal(load_waveform({key: clip16, "sampling_rate": 16000}, 16000), clip16)
    np.testing.assert_array_equal(resample(clip16, 16000, 16000), clip16)


def test_a_dict_without_a_usable_rate_is_refused():
    refused({"raw": tone()}, 'a dict of samples needs its "sampling_rate"')
    for rate in (0, -16000, 22050.5, "16k", float("nan"), True):
        refused({"array": tone(), "sampling_rate": rate}, "sampling_rate must be a positive whole number of Hz")
    # 16000.0 is a whole number of Hz.
    assert load_waveform({"array": tone(rate=16000), "sampling_rate": 16000.0}, SR).shape == (SR,)


def test_without_torchaudio_resampling_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)  # makes the import fail
    message = refused({"raw": tone(rate=16000), "sampling_rate": 16000}, "install torchaudio", name="clip 0")
    assert message.startswith("clip 0: audio at 16000 Hz must be resampled to the model's 32000 Hz")
    load_waveform({"raw": tone(), "sampling_rate": SR}, SR)  # nothing to resample: no torchaudio needed


# --------------------------------------------------------------------------------------------------------------------
# Files, bytes, undecoded datasets values and decoders
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio-files")
    paths = {
        "32k": folder / "clip32k.wav",
        "16k_stereo": folder / "stereo16k.flac",
        "text": folder / "notes.wav",  # a text file renamed .wav
    }
    soundfile.write(paths["32k"], tone(2.0), SR, subtype="FLOAT")
    stereo = np.stack([tone(1.5, 16000, seed=2), tone(1.5, 16000, 880.0, 0.25, seed=3)], axis=1)
    soundfile.write(paths["16k_stereo"], stereo, 16000)
    paths["text"].write_text("these are my notes, not audio\n" * 20)
    return paths


def test_a_path_is_read_downmixed_and_resampled(files):
    clip, rate = soundfile.read(files["32k"], dtype="float32")
    np.testing.assert_array_equal(load_waveform(str(files["32k"]), SR), clip)
    np.testing.assert_array_equal(load_waveform(files["32k"], SR), clip)  # a Path
    stereo, rate = soundfile.read(files["16k_stereo"], dtype="float32")
    waveform, native = read_audio(files["16k_stereo"], SR)
    assert native == 16000
    np.testing.assert_allclose(waveform, torchaudio_resample(stereo.mean(axis=1), 16000, SR), atol=1e-6, rtol=0)


def test_part_of_a_file_is_read_from_its_start_second(files):
    clip, _ = soundfile.read(files["32k"], dtype="float32")
    part, native = read_audio(files["32k"], SR, start=0.5, seconds=1.0)
    assert native == SR
    np.testing.assert_array_equal(part, clip[SR // 2 : SR // 2 + SR])


def test_bytes_of_a_wav_are_decoded(files):
    data = files["16k_stereo"].read_bytes()
    expected = load_waveform(str(files["16k_stereo"]), SR)
    np.testing.assert_array_equal(load_waveform(data, SR), expected)
    np.testing.assert_array_equal(load_waveform(bytearray(data), SR), expected)
    # The undecoded form of a datasets Audio column: bytes win over the path, which names the audio.
    np.testing.assert_array_equal(load_waveform({"path": "anything.flac", "bytes": data}, SR), expected)
    np.testing.assert_array_equal(load_waveform({"path": str(files["16k_stereo"]), "bytes": None}, SR), expected)
    refused({"path": "recording.wav", "bytes": b"not audio at all" * 10}, "recording.wav: cannot decode audio")
    refused(b"not audio at all" * 10, "the audio bytes: cannot decode audio")


def test_a_torchcodec_decoder_is_read_downmixed_and_resampled(files):
    from torchcodec.decoders import AudioDecoder

    clip, _ = soundfile.read(files["32k"], dtype="float32")
    np.testing.assert_allclose(load_waveform(AudioDecoder(str(files["32k"])), SR), clip, atol=1e-7, rtol=0)
    stereo, _ = soundfile.read(files["16k_stereo"], dtype="float32")
    np.testing.assert_allclose(
        load_waveform(AudioDecoder(str(files["16k_stereo"])), SR),
        torchaudio_resample(stereo.mean(axis=1).astype(np.float32), 16000, SR),
        atol=1e-5,
        rtol=0,
    )


def test_a_decoder_from_datasets_is_read(files):
    datasets = pytest.importorskip("datasets")
    decoder = datasets.Audio().decode_example({"path": str(files["32k"]), "bytes": None})
    assert hasattr(decoder, "get_all_samples")  # datasets >= 4 decodes to a torchcodec AudioDecoder
    np.testing.assert_allclose(load_waveform(decoder, SR), load_waveform(files["32k"], SR), atol=1e-7, rtol=0)


def test_a_folder_is_not_an_audio_file(tmp_path):
    refused(str(tmp_path), f"{tmp_path}: is a folder, not an audio file")
    with pytest.raises(InputError, match="is a folder"):
        audio_duration(tmp_path)


def test_a_missing_path_is_named(tmp_path):
    missing = tmp_path / "missing.wav"
    refused(str(missing), f"{missing}: no such file")
    refused({"path": str(missing), "bytes": None}, f"{missing}: no such file")
    with pytest.raises(InputError, match="no such file"):
        audio_duration(missing)


def test_a_text_file_renamed_wav_cannot_be_decoded(files):
    message = refused(str(files["text"]), f"{files['text']}: cannot decode audio \\(soundfile: .*; (FFmpeg|ffmpeg): ")
    assert message.count(str(files["text"])) >= 1
    with pytest.raises(InputError, match="cannot decode audio"):
        audio_duration(files["text"])


def test_audio_duration_reads_headers_of_paths_and_bytes(files):
    assert audio_duration(files["32k"]) == pytest.approx(2.0)
    assert audio_duration(files["16k_stereo"].read_bytes()) == pytest.approx(1.5)


def test_formats_soundfile_cannot_read_go_through_ffmpeg(files, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg program is not installed")
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(files["32k"]), "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(soundfile.LibsndfileError):
        soundfile.info(m4a)
    waveform = load_waveform(str(m4a), SR)
    assert abs(waveform.shape[0] - 2 * SR) < 0.05 * SR and np.abs(waveform).max() < 1.0
    assert load_waveform(m4a.read_bytes(), SR).shape == waveform.shape
    assert audio_duration(m4a) == pytest.approx(2.0, abs=0.05)


def test_audio_extensions_are_lower_case_with_the_dot():
    assert ".wav" in AUDIO_EXTENSIONS and ".flac" in AUDIO_EXTENSIONS and ".mp3" in AUDIO_EXTENSIONS
    assert all(ext.startswith(".") and ext == ext.lower() for ext in AUDIO_EXTENSIONS)


def test_wav_bytes_in_memory_written_by_soundfile_round_trip():
    buffer = io.BytesIO()
    clip = tone()
    soundfile.write(buffer, clip, SR, format="WAV", subtype="FLOAT")
    np.testing.assert_array_equal(load_waveform(buffer.getvalue(), SR), clip)


# --------------------------------------------------------------------------------------------------------------------
# Audio in blocks: the concatenation of `stream_audio`'s blocks is what `load_waveform` returns
# --------------------------------------------------------------------------------------------------------------------

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg program is not installed")


def streamed(source, block_samples, sampling_rate=SR, **kwargs) -> np.ndarray:
    """The blocks' concatenation, checking that every block but the last holds `block_samples`."""
    blocks = list(stream_audio(source, sampling_rate, block_samples, **kwargs))
    assert blocks and all(block.dtype == np.float32 and block.ndim == 1 for block in blocks)
    assert all(block.size == block_samples for block in blocks[:-1]) and 0 < blocks[-1].size <= block_samples
    return np.concatenate(blocks)


def stereo_file(path, rate, frames, subtype="FLOAT"):
    """A stereo file of noise and a tone (broadband, so a resampling error anywhere would show)."""
    rng = np.random.default_rng(rate + frames)
    t = np.arange(frames) / rate
    left = 0.3 * rng.standard_normal(frames) + 0.3 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * rng.standard_normal(frames)
    soundfile.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype=subtype)
    return path


@pytest.mark.parametrize("rate", [44100, 48000, 16000, 8000])
@pytest.mark.parametrize("seconds_extra", [(1, 0), (1, 1)], ids=["whole-periods", "odd-length"])
def test_a_file_streamed_in_blocks_equals_the_whole_file_resampled(tmp_path, monkeypatch, rate, seconds_extra):
    seconds, extra = seconds_extra
    path = stereo_file(tmp_path / f"{rate}.wav", rate, seconds * rate + extra)
    # Small resampling stretches, so that a 1 s file crosses many stretch boundaries (long files use 64k samples).
    monkeypatch.setattr(audio, "_MIN_RESAMPLED_CHUNK", 500)
    whole = load_waveform(str(path), SR)
    assert whole.size == -(-SR * (seconds * rate + extra) // rate)  # torchaudio's length: ceil(new * n / orig)
    for block_samples in (4000, 997, 1, 10 * SR):  # dividing the length, not dividing it, one sample, all of it
        if block_samples == 1 and rate != 8000:
            continue  # one-sample blocks are slow; one rate suffices
        np.testing.assert_allclose(streamed(str(path), block_samples), whole, atol=1e-6, rtol=0)


def test_a_file_at_the_models_rate_is_streamed_sample_for_sample(tmp_path):
    path = stereo_file(tmp_path / "32k.flac", SR, 3 * SR + 5, subtype="PCM_16")
    blocks = list(stream_audio(path, SR, SR))
    assert [block.size for block in blocks] == [SR, SR, SR, 5]
    np.testing.assert_array_equal(np.concatenate(blocks), load_waveform(path, SR))


def test_streaming_memory_is_bounded_by_the_block_not_the_file(tmp_path):
    path = tmp_path / "long.wav"
    with soundfile.SoundFile(path, "w", samplerate=48000, channels=2, subtype="PCM_16") as handle:
        for _ in range(120):  # two minutes: 46 MB as float32 stereo, 15 MB as mono at 32 kHz
            handle.write(0.1 * np.random.default_rng(0).standard_normal((48000, 2)))
    tracemalloc.start()
    try:
        samples = sum(block.size for block in stream_audio(path, SR, SR))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples == 120 * SR
    # A few blocks of input and output (1 s at 32 kHz is 128 kB as float32), nowhere near the file's 15 MB.
    assert peak < 3_000_000, peak


def test_in_memory_forms_are_cut_into_blocks():
    clip = tone(2.5)
    np.testing.assert_array_equal(streamed(clip, 8000), clip)
    clip16 = tone(1.0, rate=16000)
    np.testing.assert_array_equal(streamed({"array": clip16, "sampling_rate": 16000}, 3000),
                                  load_waveform({"array": clip16, "sampling_rate": 16000}, SR))  # fmt: skip
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, SR, format="WAV", subtype="FLOAT")
    np.testing.assert_array_equal(streamed(buffer.getvalue(), 7000), clip)


def test_an_undecoded_datasets_value_with_only_a_path_is_streamed(tmp_path):
    path = stereo_file(tmp_path / "clip.wav", SR, SR)
    np.testing.assert_array_equal(streamed({"path": str(path), "bytes": None}, 5000), load_waveform(path, SR))


@needs_ffmpeg
@pytest.mark.parametrize("torchcodec", [True, False], ids=["torchcodec", "ffmpeg-program-only"])
def test_formats_soundfile_cannot_read_are_streamed_through_an_ffmpeg_pipe(tmp_path, monkeypatch, torchcodec):
    wav = stereo_file(tmp_path / "clip.wav", 44100, 2 * 44100 + 3)
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    if not torchcodec:  # both paths then let FFmpeg mix and resample: transformers' ffmpeg_read, and the pipe
        monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    monkeypatch.setattr(audio, "_MIN_RESAMPLED_CHUNK", 500)
    whole = load_waveform(str(m4a), SR)
    # The accepted difference: none beyond float rounding (the same FFmpeg decoder, mixing and resampling).
    np.testing.assert_allclose(streamed(str(m4a), 3001), whole, atol=1e-6, rtol=0)


@needs_ffmpeg
def test_stopping_early_ends_the_ffmpeg_process(tmp_path, monkeypatch):
    wav = stereo_file(tmp_path / "clip.wav", SR, 20 * SR)
    webm = tmp_path / "clip.webm"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), "-c:a", "libopus", str(webm)], check=True)
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(audio.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    blocks = stream_audio(webm, SR, 1000)
    assert next(blocks).shape == (1000,)
    blocks.close()
    assert len(started) == 1 and started[0].returncode is not None


def test_stream_errors_name_the_file(tmp_path, files):
    missing = tmp_path / "missing.wav"
    with pytest.raises(InputError, match=f"{missing}: no such file"):
        stream_audio(missing, SR, 1000)  # when called, before any block
    with pytest.raises(InputError, match="is a folder"):
        stream_audio(tmp_path, SR, 1000)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError, match="block_samples must be a positive whole number"):
            stream_audio(files["32k"], SR, bad)
    blocks = stream_audio(files["text"], SR, 1000)
    with pytest.raises(InputError, match=f"{files['text']}: cannot decode audio \\(soundfile: ") as error:
        next(blocks)
    assert "\n" not in str(error.value)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(InputError, match=f"{empty}: the audio is empty"):
        next(stream_audio(empty, SR, 1000))
    with pytest.raises(InputError, match="recording 4: the audio is empty"):
        stream_audio(np.zeros(0, np.float32), SR, 1000, name="recording 4")


@pytest.mark.parametrize("rate", [SR, 16000])
def test_non_finite_samples_are_refused_at_their_block_with_their_position_in_the_file(tmp_path, monkeypatch, rate):
    monkeypatch.setattr(audio, "_MIN_RESAMPLED_CHUNK", 500)  # input read a block's worth at a time
    clip = tone(3.0, rate)
    clip[int(2.5 * rate)] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, clip, rate, subtype="FLOAT")
    blocks = stream_audio(path, SR, SR // 2)
    assert next(blocks).shape == (SR // 2,)  # the blocks before the bad one come out
    with pytest.raises(InputError, match=rf"nan.wav: the audio has 1 NaN or infinite samples in samples \d+-\d+ "
                                         rf"\(first at sample {int(2.5 * rate)}\)"):  # fmt: skip
        list(blocks)


def test_streaming_without_torchaudio_refuses_to_resample_before_the_first_block(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchaudio.functional", None)
    with pytest.raises(InputError, match="stereo16k.flac: audio at 16000 Hz must be resampled .* install torchaudio"):
        next(stream_audio(files["16k_stereo"], SR, 1000))
    assert streamed(files["32k"], 5000).size == 2 * SR  # nothing to resample: no torchaudio needed


@needs_ffmpeg
def test_audio_duration_of_other_formats_reads_the_header_or_counts_in_blocks(files, tmp_path, monkeypatch):
    m4a = tmp_path / "clip.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(files["32k"]), "-c:a", "aac", str(m4a)], check=True)

    def no_whole_decoding(*args):
        raise AssertionError("decoded the whole file")

    monkeypatch.setattr(audio, "_decode_with_ffmpeg", no_whole_decoding)
    assert audio_duration(m4a) == pytest.approx(2.0, abs=0.05)  # ffprobe's reading of the header
    monkeypatch.setattr(audio, "_probe_duration", lambda path: None)
    assert audio_duration(m4a) == pytest.approx(2.0, abs=0.05)  # counted, a block at a time


@pytest.mark.parametrize("channels", [1, 2])
def test_a_truncated_wav_is_refused_by_reading_and_streaming(tmp_path, channels):
    """A WAV whose header says 2 s but holds 1 s: libsndfile reports the 1 s it can read as the file's frames, and
    says the cut only in its log; both readers refuse it in one line with both lengths."""
    full, cut = tmp_path / "full.wav", tmp_path / "cut.wav"
    soundfile.write(full, np.full((2 * SR, channels), 0.1, np.float32), SR, subtype="PCM_16")
    data = full.read_bytes()
    cut.write_bytes(data[: 44 + SR * 2 * channels])
    assert soundfile.info(str(cut)).frames == SR  # what libsndfile reports: the data present
    message = f"{cut}: truncated: header says 2.000 s, data holds 1.000 s$"
    with pytest.raises(InputError, match=message):
        audio.read_audio(cut, SR)
    with pytest.raises(InputError, match=message):
        next(stream_audio(cut, SR, 1000))
    # The whole file reads as before.
    assert audio.read_audio(full, SR)[0].shape == (2 * SR,)
    assert sum(block.size for block in stream_audio(full, SR, 1000)) == 2 * SR


def test_a_zero_byte_file_and_decoder_internals(tmp_path):
    """A 0-byte file says so; torchcodec's source locations and bug-report boilerplate are cut from messages."""
    empty = tmp_path / "zero.wav"
    empty.write_bytes(b"")
    for read in (lambda: audio.read_audio(empty, SR), lambda: next(stream_audio(empty, SR, 1000)),
                 lambda: audio.audio_duration(empty)):
        with pytest.raises(InputError, match=f"^{empty}: the file is empty \\(0 bytes\\)$"):
            read()
    raw = ("SingleStreamDecoder, /__w/torchcodec/torchcodec/src/torchcodec/_core/SingleStreamDecoder.cpp:51, Could "
           "not open input file: a.wav Invalid data found. This should never happen. Please report an issue "
           "following the steps in <https://github.com/pytorch/torchcodec/issues>.")
    assert audio._one_line(raw) == "Could not open input file: a.wav Invalid data found."
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as error:
        audio.read_audio(garbage, SR)
    assert ".cpp:" not in str(error.value) and "report an issue" not in str(error.value)
    assert str(error.value).startswith(f"{garbage}: cannot decode audio")
