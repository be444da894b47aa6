"""`convert_clap`: HTS-AT models started from transformers' CLAP audio towers (LAION-CLAP).

Parity is checked offline against randomly initialised transformers CLAP models saved to disk (every norm, bias
table and BatchNorm statistic moved off its initial value, so that a mis-mapped tensor shows): the converted
backbone's final hidden states and pooled output equal `ClapAudioModel`'s within 1e-5 on the same features, and the
converted feature extractor's log-mel equals `ClapFeatureExtractor`'s (unfused path) within 1e-3 dB on the same
waveforms, for 10 s, shorter and longer clips and each padding mode.
"""

import importlib.util
import json
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    ClapAudioConfig,
    ClapAudioModel,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapTextConfig,
)

from htsat_hf import (
    HTSATFeatureExtractor,
    HTSATForAudioClassification,
    HTSATForSoundEventDetection,
    HTSATModel,
    InputError,
)
import htsat_hf.convert_clap as convert_clap_module
from htsat_hf.cli import main as cli_main
from htsat_hf.convert_clap import (
    backbone_differences,
    clap_zero_shot_logits,
    convert_clap,
    feature_extractor_settings,
    front_end_difference,
)
from htsat_hf.feature_extraction_htsat import pad_waveform
from htsat_hf.synthetic import make_classification_folder, make_detection_folder
from htsat_hf.training.data import read_label_names

from conftest import REPO_ROOT, tiny_config

SAMPLING_RATE = 48000
# An audio tower with every code path of the full one (shifted windows, patch merging, the last 8x8 stage).
SMALL_AUDIO = dict(patch_embeds_hidden_size=16, depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 4, 8], hidden_size=128)
SMALL_TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64)
# LAION's models are trained with this front end (their preprocessor_config.json); ClapFeatureExtractor's own
# default f_min is 0 Hz.
LAION_FRONT_END = dict(frequency_min=50, frequency_max=14000, truncation="rand_trunc", padding="repeatpad")


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every tensor that CLAP initialises to a constant (norms, relative position bias tables, biases,
    BatchNorm statistics) to random values, so that a tensor mapped to the wrong place changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.add_(noise * (0.1 if "norm" in name or "bias" in name else 0.01))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.num_features == 64:  # the input's BatchNorm
                module.running_mean.copy_(torch.randn(64, generator=generator) * 5 - 40)
                module.running_var.copy_(torch.rand(64, generator=generator) * 100 + 20)


def save_clap(path, model, extractor=None, license=None):
    model.eval().save_pretrained(path)
    (extractor or ClapFeatureExtractor(**LAION_FRONT_END)).save_pretrained(path)
    if license is not None:
        (path / "README.md").write_text(f"---\nlicense: {license}\ntags:\n- clap\n---\n\n# A CLAP model\n")
    return path


def test_signals(seed: int = 0) -> dict[str, np.ndarray]:
    """Clips of 10 s, shorter and longer: noise, tones, a chirp and silence at several levels, and a pure tone whose
    far mel bins lie 100 dB below its own (there a float32 front end is 0.05 dB off CLAP's float64 one)."""
    rng = np.random.default_rng(seed)
    t = np.arange(14 * SAMPLING_RATE) / SAMPLING_RATE
    mixture = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(
        2 * np.pi * (100 + 800 * t) * t
    )
    mixture[3 * SAMPLING_RATE : 4 * SAMPLING_RATE] = 0.0  # a silent second
    mixture = mixture.astype(np.float32)
    return {
        "10 s": mixture[: 10 * SAMPLING_RATE],
        "3.3 s": mixture[: int(3.3 * SAMPLING_RATE)],
        "0.4 s quiet": 1e-3 * mixture[: int(0.4 * SAMPLING_RATE)],
        "6 s": mixture[SAMPLING_RATE : 7 * SAMPLING_RATE],
        "14 s": mixture,
        "10 s pure tone": (0.5 * np.sin(2 * np.pi * 440 * t[: 10 * SAMPLING_RATE])).astype(np.float32),
    }


test_signals.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def small_clap(tmp_path_factory):
    """A small random ClapAudioModel saved with LAION's front end and a card declaring a license."""
    torch.manual_seed(1)
    model = ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO))
    randomise(model, seed=1)
    return save_clap(tmp_path_factory.mktemp("clap") / "small-audio", model, license="apache-2.0"), model.eval()


@pytest.fixture(scope="module")
def converted_small(small_clap, tmp_path_factory):
    source, _ = small_clap
    output = tmp_path_factory.mktemp("converted") / "htsat-small"
    return convert_clap(source, output), output


def clap_features(extractor: ClapFeatureExtractor, waveform: np.ndarray) -> torch.Tensor:
    """CLAP's unfused features of one clip as `(1, frames, mel_bins)` float32 (CLAP computes them in float64)."""
    features = extractor(waveform, sampling_rate=SAMPLING_RATE, truncation="rand_trunc", return_tensors="np")
    return torch.from_numpy(features["input_features"][:, 0]).float()


# ------------------------------------------------------------------------------------------------ backbone parity


def test_small_audio_tower_parity_on_clap_features(small_clap, converted_small, record_property):
    source, clap = small_clap
    report, output = converted_small
    htsat = HTSATModel.from_pretrained(output).eval()
    extractor = ClapFeatureExtractor.from_pretrained(source)
    features = torch.cat([clap_features(extractor, wave) for wave in test_signals().values()])
    differences = backbone_differences(clap, htsat, features)
    record_property("small tower differences", differences)
    assert differences["last hidden state"] <= 1e-5 and differences["pooled output"] <= 1e-5, differences
    # Both are not trivially equal: the outputs vary with the input and between clips.
    with torch.no_grad():
        pooled = htsat(features).pooler_output
    assert pooled.std(dim=0).min() > 1e-3
    assert report.checks["saved vs converted logits"] == 0.0
    assert max(report.checks[f"backbone {name} vs CLAP"] for name in ("last hidden state", "pooled output")) <= 1e-5


def test_the_converted_folder_loads_as_classifier_and_detector(converted_small):
    report, output = converted_small
    classifier = HTSATForAudioClassification.from_pretrained(output).eval()
    detector = HTSATForSoundEventDetection.from_pretrained(output).eval()
    extractor = HTSATFeatureExtractor.from_pretrained(output)
    extractor.check_matches_config(classifier.config)
    assert (extractor.sampling_rate, extractor.hop_length, extractor.n_fft) == (48000, 480, 1024)
    assert (extractor.f_min, extractor.f_max, extractor.pad_mode) == (50.0, 14000.0, "repeatpad")
    features = extractor(test_signals()["3.3 s"], sampling_rate=SAMPLING_RATE, return_tensors="pt")
    with torch.no_grad():
        clip_logits = classifier(**features).logits
        detection = detector(**features)
    assert clip_logits.shape == (1, 527) and detection.logits.shape == (1, 32, 527)
    torch.testing.assert_close(detection.clip_logits, clip_logits)
    assert report.config.use_token_semantic_head and report.license == "apache-2.0"


@pytest.mark.slow
def test_default_size_audio_tower_parity(tmp_path, record_property):
    """The size of LAION's HTS-AT towers (96-dim, depths 2-2-6-2), from a saved ClapAudioModel."""
    torch.manual_seed(2)
    model = ClapAudioModel(ClapAudioConfig())
    randomise(model, seed=2)
    source = save_clap(tmp_path / "clap-default", model)
    started = time.perf_counter()
    report = convert_clap(source, tmp_path / "htsat-default", head="linear", num_labels=10)
    record_property("conversion seconds", time.perf_counter() - started)
    htsat = HTSATModel.from_pretrained(tmp_path / "htsat-default").eval()
    extractor = ClapFeatureExtractor.from_pretrained(source)
    signals = test_signals(seed=2)
    features = torch.cat([clap_features(extractor, signals[name]) for name in ("10 s", "3.3 s", "14 s")])
    differences = backbone_differences(model.eval(), htsat, features)
    record_property("default tower differences", differences)
    assert differences["last hidden state"] <= 1e-5 and differences["pooled output"] <= 1e-5, differences
    architecture = (report.config.embed_dim, report.config.depths, report.config.num_heads)
    assert architecture == (96, [2, 2, 6, 2], [4, 8, 16, 32])
    assert not report.config.use_token_semantic_head and report.config.num_labels == 10


def test_clap_model_source_uses_its_audio_tower(tmp_path, record_property):
    """A whole ClapModel (text tower and projections besides the audio tower) converts like its audio tower."""
    torch.manual_seed(3)
    config = ClapConfig(text_config=ClapTextConfig(**SMALL_TEXT), audio_config=ClapAudioConfig(**SMALL_AUDIO),
                        projection_dim=24)
    model = ClapModel(config)
    randomise(model, seed=3)
    source = save_clap(tmp_path / "clap-model", model)
    convert_clap(source, tmp_path / "htsat")
    htsat = HTSATModel.from_pretrained(tmp_path / "htsat").eval()
    features = torch.randn(2, 1001, 64) * 15 - 45
    differences = backbone_differences(model.audio_model.eval(), htsat, features)
    record_property("ClapModel tower differences", differences)
    assert differences["last hidden state"] <= 1e-5 and differences["pooled output"] <= 1e-5, differences

    # Zero-shot tagging: CLAP's text tower against the converted audio tower gives CLAP's logits_per_audio.
    input_ids = torch.randint(3, SMALL_TEXT["vocab_size"], (3, 7), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, input_features=features.unsqueeze(1))
    ours = clap_zero_shot_logits(model, htsat, features, input_ids, attention_mask)
    record_property("zero-shot logits difference", float((ours - expected.logits_per_audio).abs().max()))
    torch.testing.assert_close(ours, expected.logits_per_audio, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- front-end parity


@pytest.mark.parametrize("padding", ["repeatpad", "pad", "repeat"])
def test_front_end_parity_for_short_and_full_clips(padding, record_property):
    clap_extractor = ClapFeatureExtractor(**{**LAION_FRONT_END, "padding": padding})
    ours = HTSATFeatureExtractor(**feature_extractor_settings(clap_extractor))
    assert ours.pad_mode == {"repeatpad": "repeatpad", "pad": "zeros", "repeat": "repeat"}[padding]
    signals = {name: wave for name, wave in test_signals().items() if name != "14 s"}
    largest = front_end_difference(clap_extractor, ours, list(signals.values()))
    record_property(f"front end difference (dB), padding={padding}", largest)
    assert largest <= 1e-4  # the issue asks for 1e-3 dB; float64 precision gives the float32 rounding of the result


def test_converter_takes_the_front_end_from_another_folder(small_clap, tmp_path):
    source, _ = small_clap
    ClapFeatureExtractor(**{**LAION_FRONT_END, "padding": "pad", "frequency_min": 0}).save_pretrained(tmp_path / "fe")
    report = convert_clap(source, tmp_path / "out", feature_extractor=tmp_path / "fe")
    ours = HTSATFeatureExtractor.from_pretrained(tmp_path / "out")
    assert (ours.pad_mode, ours.f_min, report.config.f_min) == ("zeros", 0.0, 0.0)
    assert report.checks["log-mel vs ClapFeatureExtractor (dB)"] <= 1e-3


def test_front_end_parity_for_a_longer_clip(small_clap, converted_small, monkeypatch, record_property):
    """CLAP's unfused path crops a longer clip at a random offset (`rand_trunc`); HTS-AT's `truncation=True` keeps
    the start. The same crop gives the same features: CLAP's offset drawn again with its seed, and offset 0."""
    source, _ = small_clap
    _, output = converted_small
    clap_extractor = ClapFeatureExtractor.from_pretrained(source)
    ours = HTSATFeatureExtractor.from_pretrained(output)
    wave = test_signals()["14 s"]
    limit = ours.max_length_samples
    np.random.seed(5)
    clap = clap_features(clap_extractor, wave)
    np.random.seed(5)
    offset = np.random.randint(0, wave.size - limit + 1)  # the draw ClapFeatureExtractor makes
    assert offset > 0
    cropped = ours(wave[offset : offset + limit], sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
    record_property("random crop difference (dB)", float((cropped - clap).abs().max()))
    assert float((cropped - clap).abs().max()) <= 1e-3

    monkeypatch.setattr(np.random, "randint", lambda low, high: 0)
    clap_start = clap_features(clap_extractor, wave)
    start = ours(wave, sampling_rate=SAMPLING_RATE, truncation=True, return_tensors="pt")["input_features"]
    record_property("start crop difference (dB)", float((start - clap_start).abs().max()))
    assert float((start - clap_start).abs().max()) <= 1e-3


def test_repeatpad_tiles_whole_copies_then_pads_with_zeros():
    clip = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(pad_waveform(clip, 10, "repeatpad"), [1, 2, 3, 1, 2, 3, 1, 2, 3, 0])
    np.testing.assert_array_equal(pad_waveform(clip, 5, "repeatpad"), [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(pad_waveform(clip, 7, "repeat"), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(pad_waveform(clip, 2, "repeatpad"), [1, 2])
    # The HTS-AT recipes keep their extractor defaults.
    assert HTSATFeatureExtractor().pad_mode == "zeros"


def test_precision_is_saved_and_checked(converted_small, tmp_path):
    _, output = converted_small
    assert HTSATFeatureExtractor.from_pretrained(output).precision == "float64"
    default = HTSATFeatureExtractor()
    assert default.precision == "float32"
    wave = test_signals()["10 s pure tone"][: 2 * 32000]
    features = default(wave, sampling_rate=32000, return_tensors="pt")["input_features"]
    double = HTSATFeatureExtractor(precision="float64")(wave, sampling_rate=32000, return_tensors="pt")
    assert features.dtype == double["input_features"].dtype == torch.float32
    assert 1e-3 < float((features - double["input_features"]).abs().max()) < 0.5  # float32 rounding in far bins
    with pytest.raises(InputError, match="precision must be one of"):
        HTSATFeatureExtractor(precision="half")


# ----------------------------------------------------------------------------------------------------- the card


def test_card_names_the_source_and_its_declared_license(converted_small, small_clap):
    source, _ = small_clap
    _, output = converted_small
    card = (output / "README.md").read_text()
    assert "license: apache-2.0" in card and str(source) in card
    assert "freshly initialised and untrained" in card


def test_card_invents_no_license(tmp_path):
    torch.manual_seed(4)
    source = save_clap(tmp_path / "no-card", ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO)))
    report = convert_clap(source, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    metadata = card.split("---")[1]
    assert report.license is None and "license" not in metadata
    assert "## License" in card and "Check the license" in card
    assert "check it before use" in report.summary()


# -------------------------------------------------------------------------------------------------- bad sources


def test_fused_model_is_refused_with_one_line(tmp_path):
    config = ClapAudioConfig(**SMALL_AUDIO, enable_fusion=True, fusion_type="aff_2d")
    source = save_clap(tmp_path / "fused", ClapAudioModel(config))
    with pytest.raises(InputError) as caught:
        convert_clap(source, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{source}: is a fused CLAP model") and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_sources_that_are_not_convertible_clap_models(tmp_path, small_clap):
    source, _ = small_clap
    htsat = tmp_path / "an-htsat-model"
    HTSATForAudioClassification(tiny_config()).save_pretrained(htsat)
    no_front_end = tmp_path / "no-front-end"
    ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO)).save_pretrained(no_front_end)
    clipped = tmp_path / "top-db"
    ClapFeatureExtractor(**LAION_FRONT_END, top_db=80).save_pretrained(clipped)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [
        (dict(source=tmp_path / "absent"), f"{tmp_path / 'absent'}: no such model folder"),
        (dict(source=htsat), f"{htsat}: is a 'htsat' model, not a transformers CLAP model"),
        (dict(source=no_front_end), f"{no_front_end}: has no preprocessor_config.json"),
        (dict(source=source, feature_extractor=clipped),
         f"{clipped / 'preprocessor_config.json'}: top_db=80 clips the dB range"),
        # Options are the caller's, not the source's: named alone, and checked before the model loads.
        (dict(source=source, head="conv"), "head must be one of"),
        (dict(source=source, labels=["dog", "dog"]), "labels must be a non-empty list of distinct"),
        (dict(source=source, labels=["dog", "cat", "owl"], num_labels=5), "num_labels 5 differs from the 3 labels"),
        (dict(source=source, output_dir=blocker), f"{blocker}: is a file, not a folder to write to"),
    ]
    for kwargs, expected in cases:
        kwargs.setdefault("output_dir", tmp_path / "out")
        with pytest.raises(InputError) as caught:
            convert_clap(**kwargs)
        assert str(caught.value).startswith(expected), (kwargs, str(caught.value))
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_pickled_weights_are_refused(tmp_path, small_clap):
    """Only safetensors are read: unpickling a `pytorch_model.bin` can run code (the `loading` rule)."""
    _, model = small_clap
    pickled = tmp_path / "pickled"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(InputError, match="pickled PyTorch weights are not loaded"):
        convert_clap(pickled, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- command line


def test_command_line_writes_a_linear_head_with_labels(small_clap, tmp_path, capsys):
    source, _ = small_clap
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\nbird\n")
    status = cli_main(["convert-clap", str(source), str(tmp_path / "out"), "--head", "linear", "--labels",
                       str(labels), "--problem-type", "single_label_classification"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "linear head for 3 classes" in printed and "license: apache-2.0" in printed
    assert "check backbone pooled output vs CLAP" in printed
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["use_token_semantic_head"] is False and config["problem_type"] == "single_label_classification"
    assert [config["id2label"][str(i)] for i in range(3)] == ["dog", "cat", "bird"]


def test_command_line_error_is_one_line(tmp_path, capsys):
    source = save_clap(tmp_path / "fused", ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO, enable_fusion=True)))
    capsys.readouterr()
    assert cli_main(["convert-clap", str(source), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"htsat-hf convert-clap: error: {source}: is a fused CLAP model") and "\n" not in error


# ------------------------------------------------------------------------------------- output folders and staging


def _snapshot(folder) -> dict:
    """`{relative path: bytes}` of every file under `folder`, to show that a refused run touched nothing."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_output_folder_overlapping_an_input_is_refused_before_writing(small_clap, tmp_path):
    source, _ = small_clap
    before = _snapshot(source)
    front_end = tmp_path / "front-end"
    ClapFeatureExtractor(**LAION_FRONT_END).save_pretrained(front_end)
    cases = [
        (dict(output_dir=source), f"{source}: is the input {source} itself"),
        (dict(output_dir=source, overwrite=True), f"{source}: is the input {source} itself"),
        (dict(output_dir=source / "htsat"), f"{source / 'htsat'}: lies inside the input {source}"),
        (dict(output_dir=source.parent, overwrite=True), f"{source.parent}: contains the input {source}"),
        (dict(output_dir=front_end, feature_extractor=front_end, overwrite=True),
         f"{front_end}: is the input {front_end} itself"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(InputError) as caught:
            convert_clap(source, **kwargs)
        assert str(caught.value).startswith(expected), (kwargs, str(caught.value))
    assert _snapshot(source) == before and not (source / "htsat").exists()


def test_non_empty_output_folder_needs_overwrite_and_is_then_replaced_whole(small_clap, tmp_path, capsys):
    source, _ = small_clap
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as caught:
        convert_clap(source, output)
    assert str(caught.value).startswith(f"{output}: the folder is not empty") and "--overwrite" in str(caught.value)
    assert _snapshot(output) == {"notes.txt": b"mine"}
    # The command says the same, exit 2, and replaces the folder as a whole with --overwrite: no stale file stays.
    assert cli_main(["convert-clap", str(source), str(output)]) == 2
    assert capsys.readouterr().err.startswith(f"htsat-hf convert-clap: error: {output}: the folder is not empty")
    assert cli_main(["convert-clap", str(source), str(output), "--overwrite"]) == 0
    assert not (output / "notes.txt").exists() and (output / "model.safetensors").is_file()
    assert (output / "README.md").is_file() and [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left
    # An existing empty folder is used as it is.
    (tmp_path / "empty").mkdir()
    convert_clap(source, tmp_path / "empty", head="linear", num_labels=3)
    assert (tmp_path / "empty" / "config.json").is_file()


def test_labels_file_inside_the_output_folder_is_not_deleted_by_overwrite(small_clap, tmp_path, capsys):
    source, _ = small_clap
    (tmp_path / "out").mkdir()
    labels = tmp_path / "out" / "labels.txt"
    labels.write_text("dog\ncat\n")
    assert cli_main(["convert-clap", str(source), str(tmp_path / "out"), "--labels", str(labels), "--overwrite"]) == 2
    assert f"{tmp_path / 'out'}: contains the input {labels}" in capsys.readouterr().err
    assert labels.read_text() == "dog\ncat\n"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), InputError("the reload check failed")])
def test_a_failure_while_writing_leaves_no_partial_folder(small_clap, tmp_path, monkeypatch, interrupt):
    """Ctrl-C or a failed check after the first files are written: the output folder does not appear (nor the
    parents made for it), and an existing one (--overwrite) is left as it was."""
    source, _ = small_clap
    def fail(*args, **kwargs):
        raise interrupt

    # The card is the last file: the weights and the extractor are written by then.
    monkeypatch.setattr(convert_clap_module, "save_model_card", fail)
    with pytest.raises(type(interrupt)):
        convert_clap(source, tmp_path / "new" / "deeper" / "out")
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "model.safetensors").write_bytes(b"an older model")
    with pytest.raises(type(interrupt)):
        convert_clap(source, kept, overwrite=True)
    assert _snapshot(kept) == {"model.safetensors": b"an older model"} and [p.name for p in tmp_path.iterdir()] == [
        "kept"
    ]


# ------------------------------------------------------------------------------------------ damaged checkpoints


def _edited_copy(source, destination, edit):
    """A copy of the saved CLAP folder `source` whose `model.safetensors` tensors went through `edit(dict)`."""
    shutil.copytree(source, destination)
    tensors = load_file(destination / "model.safetensors")
    edit(tensors)
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def test_missing_extra_or_misshapen_tensors_are_refused_naming_the_file(small_clap, tmp_path, capfd):
    source, _ = small_clap
    norm = "audio_encoder.layers.1.blocks.0.layernorm_before.weight"
    running_mean = "audio_encoder.batch_norm.running_mean"
    bias_table = "audio_encoder.layers.0.blocks.0.attention.self.relative_position_bias_table"
    cases = {
        "no-norm": (lambda t: t.pop(norm), f"1 tensors missing: {norm}"),
        "no-running-mean": (lambda t: t.pop(running_mean), f"1 tensors missing: {running_mean}"),
        "extra": (lambda t: t.update({"audio_encoder.fusion_model.weight": torch.ones(3)}),
                  "1 tensors the config does not have: audio_encoder.fusion_model.weight"),
        "misshapen": (lambda t: t.update({bias_table: torch.zeros(224, 1)}),
                      f"1 tensors of the wrong shape: {bias_table} (224, 1) (the config needs (225, 1))"),
    }
    capfd.readouterr()
    for name, (edit, expected) in cases.items():
        damaged = _edited_copy(source, tmp_path / name, edit)
        with pytest.raises(InputError) as caught:
            convert_clap(damaged, tmp_path / "out")
        message = str(caught.value)
        assert message == f"{damaged / 'model.safetensors'}: does not match the model's config.json: {expected}", name
    assert not (tmp_path / "out").exists()
    # transformers' LOAD REPORT table and warnings stay silent: the one line above says it all.
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out and "Warning" not in captured.err


def test_recomputed_buffers_may_be_absent_from_the_checkpoint(small_clap, tmp_path):
    """transformers recomputes `relative_position_index` exactly: a checkpoint without it loads as before."""
    source, _ = small_clap
    damaged = _edited_copy(
        source, tmp_path / "no-index",
        lambda t: [t.pop(k) for k in list(t) if k.endswith("relative_position_index")],
    )
    report = convert_clap(damaged, tmp_path / "out", head="linear", num_labels=3)
    assert report.checks["backbone pooled output vs CLAP"] <= 1e-5


def test_spec_size_whose_last_stage_is_smaller_than_the_window_is_refused_naming_spec_size(tmp_path):
    source = tmp_path / "spec-128"
    ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO, spec_size=128)).save_pretrained(source)
    with pytest.raises(InputError) as caught:
        convert_clap(source, tmp_path / "out")
    assert str(caught.value) == (
        f"{source}: this CLAP audio tower cannot be converted exactly: spec_size 128 (with patch_size 4 and 4 stages "
        "the last stage's token grid is 4x4, smaller than window_size 8)"
    )


# ------------------------------------------------------------------------------------------------ bad front ends


def _front_end(folder, **changes):
    """A preprocessor_config.json of LAION's front end with `changes` written into the JSON (values that
    ClapFeatureExtractor itself would refuse included)."""
    ClapFeatureExtractor(**LAION_FRONT_END).save_pretrained(folder)
    path = folder / "preprocessor_config.json"
    settings = json.loads(path.read_text())
    settings.update(changes)
    path.write_text(json.dumps(settings))
    return folder


def test_front_ends_that_are_refused_name_the_file_and_values(small_clap, tmp_path, capfd):
    source, _ = small_clap
    htsat = tmp_path / "an-htsat-model"
    HTSATForAudioClassification(tiny_config()).save_pretrained(htsat)
    HTSATFeatureExtractor().save_pretrained(htsat)
    a_file = tmp_path / "afile.txt"
    a_file.write_text("x")
    no_config = tmp_path / "bert"
    no_config.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "preprocessor_config.json").write_text("{not json")
    reversed_range = _front_end(tmp_path / "reversed", frequency_min=15000, frequency_max=14000)
    above_nyquist = _front_end(tmp_path / "16k", sampling_rate=16000)
    empty_filters = _front_end(tmp_path / "coarse", fft_window_size=128)
    long_hop = _front_end(tmp_path / "hop-320", hop_length=320)

    def file(folder):
        return folder / "preprocessor_config.json"

    cases = [
        (htsat, f"{file(htsat)}: is a 'HTSATFeatureExtractor', not a ClapFeatureExtractor's"),
        (a_file, f"{a_file}: is a file, not a folder holding a preprocessor_config.json"),
        (no_config, f"{no_config}: has no preprocessor_config.json, so the CLAP front end is unknown; name the folder "
                    "or Hub id of the source CLAP model's own preprocessor_config.json"),
        (broken, f"{file(broken)}: cannot read the CLAP feature extractor"),
        (tmp_path / "absent", f"{tmp_path / 'absent'}: no such model folder"),
        (reversed_range, f"{file(reversed_range)}: needs 0 <= frequency_min < frequency_max <= sampling_rate / 2 "
                         "(Nyquist), got frequency_min 15000, frequency_max 14000, sampling_rate 48000"),
        (above_nyquist, f"{file(above_nyquist)}: needs 0 <= frequency_min < frequency_max <= sampling_rate / 2 "
                        "(Nyquist), got frequency_min 50, frequency_max 14000, sampling_rate 16000"),
        (empty_filters, f"{file(empty_filters)}: "),
        (long_hop, f"{file(long_hop)}: a 10 s clip at 48000 Hz with hop_length 320 gives 1501 frames, more than the "
                   "1024 the audio tower reads (spec_size 256 x freq_ratio 4)"),
    ]
    capfd.readouterr()
    for folder, expected in cases:
        with pytest.raises(InputError) as caught:
            convert_clap(source, tmp_path / "out", feature_extractor=folder)
        assert str(caught.value).startswith(expected), (folder, str(caught.value))
        assert "\n" not in str(caught.value)
    assert "mel filters are all zero (first: bin 0)" in str(
        pytest.raises(InputError, convert_clap, source, tmp_path / "out", feature_extractor=empty_filters).value
    )
    assert not (tmp_path / "out").exists()
    assert capfd.readouterr().err == ""  # no multi-line library warnings (e.g. transformers' zero-filter warning)


def test_missing_front_end_advice_names_the_source_models_own_config(tmp_path):
    no_front_end = tmp_path / "no-front-end"
    ClapAudioModel(ClapAudioConfig(**SMALL_AUDIO)).save_pretrained(no_front_end)
    with pytest.raises(InputError) as caught:
        convert_clap(no_front_end, tmp_path / "out")
    message = str(caught.value)
    assert "the source CLAP model's own preprocessor_config.json" in message and "--feature-extractor" in message
    assert "save the model's ClapFeatureExtractor" not in message  # its defaults (f_min 0 Hz) are not LAION's


def test_front_end_that_converts_with_a_warning(small_clap, tmp_path, capsys):
    """32 kHz (f_max 14 kHz below its Nyquist) and f_min 0 Hz convert exactly, with one warning line each."""
    source, _ = small_clap
    front_end = _front_end(tmp_path / "32k-fmin0", sampling_rate=32000, frequency_min=0)
    assert cli_main(["convert-clap", str(source), str(tmp_path / "out"), "--feature-extractor", str(front_end),
                     "--head", "linear", "--num-labels", "3"]) == 0
    err = capsys.readouterr().err.splitlines()
    where = front_end / "preprocessor_config.json"
    assert err == [
        f"htsat-hf convert-clap: warning: {where}: sampling_rate 32000 differs from the 48000 Hz LAION's CLAP models "
        "were trained at; converted as given",
        f"htsat-hf convert-clap: warning: {where}: frequency_min is 0 Hz, ClapFeatureExtractor's default; LAION's "
        "CLAP models were trained with 50 Hz: check that this is the source model's own preprocessor_config.json",
    ]
    saved = HTSATFeatureExtractor.from_pretrained(tmp_path / "out")
    assert (saved.sampling_rate, saved.f_min, saved.f_max) == (32000, 0.0, 14000.0)


# -------------------------------------------------------------------------------------------- options and card


def test_conflicting_label_options_are_named_before_the_model_loads(small_clap, tmp_path, capsys, monkeypatch):
    source, _ = small_clap
    monkeypatch.setattr(convert_clap_module, "load_clap_audio_tower", lambda *a: pytest.fail("loaded the model first"))
    labels = tmp_path / "lab3.txt"
    labels.write_text("dog\ncat\nowl\n")
    assert cli_main(["convert-clap", str(source), str(tmp_path / "out"), "--labels", str(labels),
                     "--num-labels", "5"]) == 2
    assert capsys.readouterr().err == (
        f"htsat-hf convert-clap: error: --num-labels 5 differs from the 3 labels in --labels {labels}\n"
    )


def test_labels_file_may_end_with_a_blank_line(small_clap, tmp_path):
    source, _ = small_clap
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\n\n")  # what some editors save
    assert cli_main(["convert-clap", str(source), str(tmp_path / "out"), "--labels", str(labels), "--head",
                     "linear"]) == 0
    assert HTSATForAudioClassification.from_pretrained(tmp_path / "out").config.id2label == {0: "dog", 1: "cat"}
    labels.write_text("dog\n\ncat\n")  # a blank line between names is still refused
    with pytest.raises(InputError, match=f"{labels}, line 2: blank line"):
        read_label_names(str(labels))


def test_card_text_names_the_base_model_given_for_a_local_copy(small_clap, tmp_path):
    source, _ = small_clap
    convert_clap(source, tmp_path / "out", head="linear", num_labels=3, base_model="laion/clap-htsat-unfused")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: laion/clap-htsat-unfused" in card
    assert "the CLAP model [laion/clap-htsat-unfused](https://huggingface.co/laion/clap-htsat-unfused)" in card
    assert str(source) not in card and ".partial-" not in card and "# out" in card



# ------------------------------------------------------------------------------------------------------ recipes


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_for_clap_tests", REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipes_parse_with_the_training_scripts():
    model_args, data_args, training_args = load_script("run_audio_classification").parse_arguments(
        [str(REPO_ROOT / "configs" / "clap_esc50.json")]
    )
    assert model_args.model_name_or_path == "htsat-clap" and data_args.pad_mode == "repeatpad"
    assert training_args.do_train and training_args.metric_for_best_model == "accuracy"

    model_args, detection, evaluation, strong, training = load_script("run_sed").parse_arguments(
        [str(REPO_ROOT / "configs" / "clap_sed.json")]
    )
    assert model_args.model_name_or_path == "htsat-clap" and training.do_train
    assert strong.train_dir and strong.eval_dir and training.metric_for_best_model == "frame_f1_macro"


def test_a_converted_tower_fine_tunes_with_both_scripts(converted_small, tmp_path, monkeypatch):
    """Smoke run of the recipes' code paths on a converted tower: a few steps of classification (48 kHz, repeatpad)
    and of strong-label detection on generated 32 kHz audio, resampled when decoded."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, model_dir = converted_small
        folder = make_classification_folder(tmp_path / "sounds", clips_per_class=2, seconds=1.0, seed=0)
        common = ["--model_name_or_path", str(model_dir), "--max_length_seconds", "1", "--max_steps", "2",
                  "--per_device_train_batch_size", "2", "--report_to", "none", "--dataloader_num_workers", "0",
                  "--disable_tqdm", "true", "--use_cpu", "true"]
        status = load_script("run_audio_classification").main(
            ["--train_dir", str(folder), "--eval_dir", str(folder), "--pad_mode", "repeatpad", "--do_train",
             "--do_eval", "--output_dir", str(tmp_path / "classifier"), *common]
        )
        assert status == 0
        saved = HTSATFeatureExtractor.from_pretrained(tmp_path / "classifier")
        assert (saved.sampling_rate, saved.pad_mode, saved.precision) == (48000, "repeatpad", "float64")

        scenes = make_detection_folder(tmp_path / "scenes", num_files=2, seed=0)
        status = load_script("run_sed").main(
            ["--do_train", "--train_dir", str(scenes), "--output_dir", str(tmp_path / "detector"), "--plot", "false",
             *[arg for arg in common if arg != "--max_length_seconds" and arg != "1"]]
        )
        assert status == 0
        assert HTSATForSoundEventDetection.from_pretrained(tmp_path / "detector").config.sampling_rate == 48000
    finally:
        torch.set_num_threads(threads)
