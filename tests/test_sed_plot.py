"""One file's detection as a PNG (`htsat_hf.sed.plot`), from the sound-event-detection pipeline's output."""

from test_sed_windows import RATE, loudness_model, scene
from transformers import pipeline

from htsat_hf.sed.plot import plot_detection, select_classes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_from_pipeline_output(tmp_path):
    """The pipeline's event dicts and frame scores plot directly; audio past 2 min is drawn as an envelope."""
    model, extractor = loudness_model(("low", "high"))
    detector = pipeline("sound-event-detection", model=model, feature_extractor=extractor)
    for seconds in (6.0, 150.0):
        wave = scene(seconds, [(1.0, 2.5, 500.0), (seconds - 3.0, seconds - 1.0, 7000.0)])
        output = detector(wave, return_frame_scores=True)
        assert [event["label"] for event in output["events"]] == ["low", "high"]
        assert sorted(select_classes(output["frame_scores"], output["events"], top_k=0)) == [0, 1]
        path = plot_detection(tmp_path / f"{seconds:.0f}.png", wave, RATE, output["frame_scores"], output["events"],
                              reference=[(1.0, 2.5, "low")], thresholds=0.5)
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size < 200_000
