"""Sound event detection with HTS-AT's frame output, in modules that follow the data path; each imports only those
above it in this list:

- `io`: the tables (DCASE events, durations, operating points, sed_scores_eval score files, thresholds), with pandas;
- `windows`: the model's time grid and sliding windows over audio of any length (`FrameScores`);
- `postprocessing`: class maps, median filter, thresholds, events;
- `targets`: strong-label training data (frame targets, folders, collator, frame F1);
- `metrics`: the DCASE metrics (the only module that needs `pip install 'htsat-hf[sed]'`'s metric libraries,
  imported when a metric runs);
- `plot`: one file's detection as a PNG (matplotlib, imported when drawing);
- `pipeline`: `pipeline("sound-event-detection")`;
- `detection`: runs over many files with their outputs and scoring (what `run_sed.py` runs).

`import htsat_hf` imports this package for its pipeline, so only what needs the core dependencies alone is
re-exported here (the time grid, post-processing, the pipeline); the table, training, metric, plotting and
batch-detection modules, which need pandas (and the metric libraries, matplotlib), are imported by their own path,
e.g. `from htsat_hf.sed.detection import run_detection`.
"""

from .io import read_thresholds
from .pipeline import SoundEventDetectionPipeline
from .postprocessing import (
    ClassMap,
    Event,
    detect_events,
    frame_scores_events,
    load_class_map,
    map_frame_scores,
    resolve_thresholds,
)
from .windows import FrameScores, grid_step_seconds, sliding_window_scores

__all__ = [
    "ClassMap",
    "Event",
    "FrameScores",
    "SoundEventDetectionPipeline",
    "detect_events",
    "frame_scores_events",
    "grid_step_seconds",
    "load_class_map",
    "map_frame_scores",
    "read_thresholds",
    "resolve_thresholds",
    "sliding_window_scores",
]
