"""The `htsat-hf` command line: `convert`, `convert-clap`, `predict`, `average`, `export-onnx` and `card`.

This module only parses arguments and calls the package: `convert_htsat_original_checkpoint`, `convert_clap`, `predict`,
`training.checkpoints`, `onnx_export` and `model_card` hold the logic.

Errors: every command prints each problem as one line `htsat-hf COMMAND: error: MESSAGE` on stderr, never a
traceback, and exits with status 2 when it stops on bad input: an option out of range (checked when the arguments
are parsed, naming the option), or an [`InputError`] or `OSError` from the package (a missing model folder or file,
an unreadable checkpoint, an output folder that cannot be written, ...). `predict` goes on past audio files that
cannot be read, naming each, and then exits with status 1. Success is status 0.
"""

import argparse
import csv
import math
import os
import sys

from .errors import InputError, Stopped, error_line, stop_signals_raise


def _convert(args: argparse.Namespace) -> int:
    from .convert_htsat_original_checkpoint import convert_checkpoint

    report = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        sampling_rate=args.sample_rate,
        hop_length=args.hop_length,
        n_fft=args.n_fft,
        num_mel_bins=args.mel_bins,
        f_min=args.fmin,
        f_max=args.fmax,
        problem_type=args.problem_type,
        labels_file=args.labels,
        pad_mode=args.pad_mode,
        max_length_seconds=args.max_length_seconds,
        overwrite=args.overwrite,
    )
    print(report.summary())
    return 0


def _convert_clap(args: argparse.Namespace) -> int:
    import logging

    from .convert_clap import convert_clap
    from .loading import check_new_output_dir
    from .training.data import read_label_names

    # Checked before the model loads, naming the options (the library names its arguments).
    labels = read_label_names(args.labels) if args.labels else None
    if labels is not None and args.num_labels is not None and args.num_labels != len(labels):
        raise InputError(
            f"--num-labels {args.num_labels} differs from the {len(labels)} labels in --labels {args.labels}"
        )
    # The labels file too: --overwrite would delete it with the folder it lies in.
    check_new_output_dir(args.output_dir, (args.clap_model, args.feature_extractor, args.labels), args.overwrite)
    # The converter's warnings as this command's one-line form, on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("htsat-hf convert-clap: warning: %(message)s"))
    converter_logger = logging.getLogger("htsat_hf.convert_clap")
    converter_logger.addHandler(handler)
    try:
        report = convert_clap(
            args.clap_model,
            args.output_dir,
            head=args.head,
            labels=labels,
            num_labels=args.num_labels,
            problem_type=args.problem_type,
            feature_extractor=args.feature_extractor,
            base_model=args.base_model,
            overwrite=args.overwrite,
        )
    finally:
        converter_logger.removeHandler(handler)
    print(report.summary())
    return 0


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as the one line every command prints for an error, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _whole_number(smallest: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be >= {smallest}, got {value}")
        return value

    return parse


def _seconds(positive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a number of seconds {'>' if positive else '>='} 0, got {text}")
        return value

    return parse


def _frequency(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a frequency in Hz, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a frequency in Hz >= 0, got {text}")
    return value


def _threshold(text: str) -> float | str:
    """A number for every class, or the path of a thresholds file (read by `resolve_thresholds`)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number or a thresholds file, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None/False of optional flags, whose help says what happens without them."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _error(command: str, error: BaseException) -> None:
    print(f"htsat-hf {command}: error: {error_line(error)}", file=sys.stderr)


def _predict(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from .engine import InferenceEngine, default_device, in_input_order, output_format, write_predictions
    from .inputs import collect_inputs, dataset_items
    from .predict import TSV_COLUMNS, check_options, format_predictions, load_predictor, tsv_rows
    from .sed.postprocessing import DetectionSettings

    # The weight-loading progress bar would interleave with the per-file output.
    transformers_logging.disable_progress_bar()
    # Inputs and options first: a typo fails at once, before the model loads.
    if bool(args.inputs) == (args.dataset is not None):
        raise InputError("give audio files, folders or list files, or --dataset, not both" if args.inputs
                         else "give audio files, folders or list files, or --dataset")
    if args.output is not None:
        output_format(args.output)
    if args.resume and args.output is None:
        raise InputError("--resume continues a run into --output; give --output")
    if args.output is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("under accelerate launch, give --output: the processes share the files and merge one output")
    if args.inputs:
        # Outputs name files by their path, so files of one name in different folders are fine.
        items = collect_inputs(args.inputs, keyed_by_name=False)
    else:
        items = dataset_items(args.dataset, args.dataset_config, args.split, args.audio_column, args.streaming)
    model, extractor = load_predictor(args.model, device=args.device or default_device(), dtype=args.dtype)
    class_map, thresholds = check_options(
        model, args.top_k, args.threshold, args.class_map, args.median_filter, args.batch_size
    )
    labels = class_map.labels if class_map is not None else [model.config.id2label[i]
                                                             for i in range(model.config.num_labels)]
    settings = DetectionSettings(labels=labels, thresholds=thresholds, class_map=class_map,
                                 median_filter_seconds=args.median_filter, batch_size=args.batch_size)
    engine = InferenceEngine(model, extractor, settings, top_k=args.top_k, num_workers=args.num_workers)
    progress = False if args.no_progress else None

    def report(result) -> None:
        # Keep going: one bad file in a batch should not discard the others' results.
        _error("predict", InputError(result.error))

    if args.output is not None:
        _, failed = write_predictions(engine, items, args.output, resume=args.resume, progress=progress,
                                      on_error=report)
        return 1 if failed else 0
    predictions, failed = [], 0
    tsv = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    for result in in_input_order(engine.run(items)):
        if result.error is not None:
            report(result)
            failed += 1
            continue
        # Table and TSV are printed as each file completes (in input order); JSON is one array, printed at the end.
        if args.format == "table":
            print(("\n" if predictions else "") + format_predictions([result.prediction], "table"), flush=True)
        elif args.format == "tsv":
            if not predictions:
                tsv.writerow(TSV_COLUMNS)
            tsv.writerows(tsv_rows(result.prediction))
            sys.stdout.flush()
        predictions.append(result.prediction)
    if args.format == "json" and predictions:
        print(format_predictions(predictions, "json"))
    return 1 if failed else 0


def _average(args: argparse.Namespace) -> int:
    from .training.checkpoints import average_checkpoints

    average_checkpoints(args.model_dirs, args.output, overwrite=args.overwrite)
    print(f"averaged the weights of {len(args.model_dirs)} models into {args.output}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    try:
        result = export_onnx(
            args.model_dir,
            args.output,
            task=args.task,
            opset=args.opset,
            exporter=args.exporter,
            verify=not args.no_verify,
            overwrite=args.overwrite,
        )
    except ImportError as error:  # onnx or onnxruntime is not installed: the message says what to install
        _error("export-onnx", error)
        return 2
    print(result.summary())
    return 0


def _card(args: argparse.Namespace) -> int:
    from .model_card import read_metrics_json, save_model_card

    metrics = read_metrics_json(args.metrics_json) if args.metrics_json else None
    path = save_model_card(
        args.model_dir,
        base_model=args.base_model,
        datasets=args.dataset,
        license=args.license,
        metrics=metrics,
        dataset_name=args.dataset_name,
        dataset_type=args.dataset_type,
        dataset_split=args.dataset_split,
        task=args.task,
        repo_id=args.repo_id,
    )
    print(f"wrote {path}")
    return 0


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="tag audio files of any length and list the sound events in them",
        description=(
            "Decode each audio file given, found in a folder given (recursively), or listed in a list file (one path "
            "per line, relative to the list; blank lines and # comments skipped), or each row of a datasets split "
            "(--dataset), block by block with soundfile, or the ffmpeg program for formats soundfile cannot read, in "
            "--num-workers processes; downmix to mono, resample to the model's rate (torchaudio), and run the model "
            "over windows of its clip length (its extractor's max_length_seconds, 10 s for AudioSet models), packed "
            "across files into batches of --batch-size. Memory stays flat whatever a file's duration. With --output, "
            "results are journalled as each file completes "
            "(OUTPUT.parts/) and written in input order when all are done; --resume continues an interrupted run. "
            "Under accelerate launch, files are shared out across the processes and one output is written. "
            "Tags: the top-k classes by clip score; multi-label models score each class with the sigmoid of the "
            "window's clip logits, single-label models with the softmax, both averaged over the windows. Events "
            "(onset, offset, label, score): per-step sigmoid probabilities (about 0.31 s steps for a 10 s model), "
            "optionally median filtered, above the threshold, joined into runs; score is the peak probability. "
            "Files that cannot be read are reported on stderr by name, the others still processed; the exit "
            "status is then 1. A path that does not exist, a bad option or model stops the command with status 2."
        ),
        formatter_class=_HelpFormatter,
    )
    predict.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="audio files (wav, flac, ogg, mp3, ...), folders of audio files (searched recursively), or list files "
        "of audio paths",
    )
    predict.add_argument("--dataset", default=None, help="a datasets dataset (Hub id or folder) instead of files")
    predict.add_argument("--dataset-config", default=None, help="its configuration name")
    predict.add_argument("--split", default="test", help="its split")
    predict.add_argument("--audio-column", default="audio", help="its audio column")
    predict.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    predict.add_argument("--model", required=True, help="saved model folder (or Hub id) of an HTS-AT model")
    predict.add_argument("--top-k", type=_whole_number(0), default=5, help="number of tags to print per file")
    predict.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="event threshold on the frame probabilities: one number for every class, or a thresholds file "
        "(.json {label: threshold}, or .tsv lines label<TAB>threshold) (default: the class map's own thresholds "
        "when it has some, else 0.5)",
    )
    predict.add_argument(
        "--class-map",
        default=None,
        help="map the model's classes to other classes before tagging and detection: 'desed' (AudioSet to the 10 "
        "DESED classes, with HTS-AT's thresholds) or a class-map JSON file",
    )
    predict.add_argument(
        "--median-filter",
        type=_seconds(positive=False),
        default=None,
        metavar="SECONDS",
        help="median filter length over the frame probabilities before thresholding (DCASE practice: 0.45)",
    )
    predict.add_argument(
        "--format",
        choices=["table", "json", "tsv"],
        default="table",
        help="table: readable; json: one array with file, duration, tags and events per file; tsv: columns "
        "filename, onset, offset, event_label, score, kind (kind 'tag' rows span the whole file, 'event' rows "
        "are the detected events)",
    )
    predict.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="write the results to FILE.jsonl (one JSON object per file, the fields of --format json) or FILE.tsv "
        "(the columns of --format tsv) instead of printing them; refused if FILE exists, unless --resume",
    )
    predict.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run into --output, skipping the files it holds; refused if the model, options "
        "or inputs differ from that run's",
    )
    predict.add_argument(
        "--device",
        default=None,
        help="torch device to run the model on (cpu, cuda, cuda:1, ...) (default: cpu; under accelerate launch, "
        "each process's own device)",
    )
    predict.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None,
        help="precision to load and run the model in (default: as saved, float32)",
    )
    predict.add_argument("--batch-size", type=_whole_number(1), default=8, help="windows per forward pass")
    predict.add_argument(
        "--num-workers", type=_whole_number(0), default=0, help="processes decoding audio (0: the main process)"
    )
    predict.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    predict.set_defaults(handler=_predict)


def _add_average(commands) -> None:
    average = commands.add_parser(
        "average",
        help="average the weights of several saved models into one",
        description=(
            "Average every floating-point weight and buffer (BatchNorm statistics included) of saved models of one "
            "architecture and label set, e.g. the best checkpoints of one training run, as the released AudioSet "
            "model was made. Config and feature extractor come from the first folder. Models that differ in "
            "architecture or labels are refused. The output folder must be new or empty (--overwrite replaces it "
            "as a whole) and may not be, contain or lie inside one of the DIRs; it appears only when complete."
        ),
        formatter_class=_HelpFormatter,
    )
    average.add_argument("model_dirs", nargs="+", metavar="DIR", help="saved model folders (save_pretrained output)")
    average.add_argument("--output", required=True, help="folder to write the averaged model to")
    average.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT as a whole when it exists and is not empty (default: refuse)",
    )
    average.set_defaults(handler=_average)


def _add_export_onnx(commands) -> None:
    export = commands.add_parser(
        "export-onnx",
        help="export a saved model to ONNX and check it against PyTorch with onnxruntime",
        description=(
            "Write one self-contained .onnx file that takes log-mel input_features (batch, frames, mel_bins) "
            "float32 from the model's feature extractor, with a dynamic batch axis (and, with the default exporter, "
            "a dynamic frame axis below the model's 1024 frames). classification: -> logits (batch, labels); "
            "detection: -> frame_logits (batch, steps, labels), clip_logits (batch, labels). Logits are "
            "pre-sigmoid/softmax. Labels and front-end settings are stored in the file's metadata. Unless "
            "--no-verify, the file is run with onnxruntime on batches of 1 and 3 and compared with PyTorch "
            "(tolerance 1e-4 plus 1e-4 times the largest output magnitude: float32 rounding in the bicubic stretch "
            "to 1024 frames differs between the runtimes). An existing OUTPUT is refused unless --overwrite; the "
            "file is written beside it under a temporary name and takes its place only once exported and verified, "
            "so a failed export leaves the old file as it was. OUTPUT may not be one of MODEL_DIR's files."
        ),
        formatter_class=_HelpFormatter,
    )
    export.add_argument("model_dir", help="saved model folder")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument("--task", choices=["classification", "detection"], default="classification", help="outputs")
    export.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    export.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT when it exists (default: refuse)"
    )
    export.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="torch.onnx exporter: dynamo (torch.export based), torchscript (legacy), or auto (dynamo, then "
        "torchscript if it fails)",
    )
    export.add_argument(
        "--opset", type=_whole_number(1), default=None, help="ONNX opset (default: 18 with dynamo, 17 with torchscript)"
    )
    export.set_defaults(handler=_export_onnx)


def _add_card(commands) -> None:
    card = commands.add_parser(
        "card",
        help="write a Hub model card (README.md) into a saved model folder",
        description=(
            "Write MODEL_DIR/README.md (replacing an existing one): Hub metadata (pipeline tag, library, tags, "
            "datasets, base model, license, and a model-index with the evaluation metrics), usage snippets with "
            "htsat_hf and with trust_remote_code=True, the model's input requirements, its labels and the citation."
        ),
        formatter_class=_HelpFormatter,
    )
    card.add_argument("model_dir", help="saved model folder")
    card.add_argument("--repo-id", default=None, help="Hub id the usage snippets load (default: the folder's name)")
    card.add_argument("--base-model", default=None, help="Hub id of the model this one was fine-tuned from")
    card.add_argument(
        "--dataset", action="append", default=None, help="Hub id of a training dataset (repeat for several)"
    )
    card.add_argument(
        "--metrics-json",
        default=None,
        help="evaluation results as a JSON object, e.g. Trainer's eval_results.json (eval_ prefixes and "
        "loss/runtime/epoch entries are dropped)",
    )
    card.add_argument(
        "--dataset-type", default=None, help="Hub id of the evaluation dataset (default: the first --dataset)"
    )
    card.add_argument("--dataset-name", default=None, help="display name of the evaluation dataset")
    card.add_argument("--dataset-split", default=None, help="evaluation split, e.g. test")
    card.add_argument("--license", default="mit", help="license identifier")
    card.add_argument(
        "--task",
        choices=["audio-classification", "sound-event-detection"],
        default="audio-classification",
        help="task of the evaluation results; also which usage example comes first",
    )
    card.set_defaults(handler=_card)


def _add_convert_clap(commands) -> None:
    convert_clap = commands.add_parser(
        "convert-clap",
        help="start an HTS-AT model from the audio tower of a transformers CLAP model (LAION-CLAP)",
        description=(
            "Convert the audio tower of an unfused transformers ClapModel or ClapAudioModel (a saved folder or Hub "
            "id, e.g. laion/clap-htsat-unfused) into an HTS-AT model folder: the "
            "backbone weights with a new, untrained head (token-semantic or linear) to fine-tune, a feature "
            "extractor reproducing the source's unfused ClapFeatureExtractor features (its rate, 48 kHz for LAION's "
            "models, hop, mel range and padding), and a model card naming the source and the license its card "
            "declares. Before writing, the converted backbone and front end are run against the source's and "
            "refused if they differ; the folder appears only when complete. Fused models (enable_fusion) are "
            "refused. Hub ids need network access (or a cached copy). See docs/clap.md."
        ),
        formatter_class=_HelpFormatter,
    )
    convert_clap.add_argument("clap_model", help="folder or Hub id of a ClapModel or ClapAudioModel (safetensors)")
    convert_clap.add_argument("output_dir", help="folder to write the HTS-AT model to")
    convert_clap.add_argument(
        "--head", choices=["token-semantic", "linear"], default="token-semantic", help="the new classification head"
    )
    convert_clap.add_argument(
        "--labels",
        default=None,
        help="class names of the head: one per line, or an AudioSet-style class_labels_indices.csv (default: "
        "--num-labels classes LABEL_0, LABEL_1, ...; fine-tuning replaces the head for the data's labels anyway)",
    )
    convert_clap.add_argument(
        "--num-labels",
        type=_whole_number(1),
        default=None,
        help="number of classes without --labels (default: the tower's num_classes, 527)",
    )
    convert_clap.add_argument(
        "--problem-type",
        choices=["multi_label_classification", "single_label_classification"],
        default="multi_label_classification",
        help="sigmoid scores (multi-label) or softmax scores (single-label)",
    )
    convert_clap.add_argument(
        "--feature-extractor",
        default=None,
        help="folder or Hub id with the source CLAP model's own preprocessor_config.json: required when CLAP_MODEL "
        "has none, and used instead of CLAP_MODEL's when given",
    )
    convert_clap.add_argument(
        "--base-model",
        default=None,
        help="Hub id of the source, named by the card's metadata and text (default: CLAP_MODEL when a Hub id)",
    )
    convert_clap.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT_DIR as a whole when it exists and is not empty (default: refuse)",
    )
    convert_clap.set_defaults(handler=_convert_clap)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="htsat-hf", description="HTS-AT models for Hugging Face transformers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    convert = commands.add_parser(
        "convert",
        help="convert an original HTS-AT checkpoint into a transformers model directory",
        description=(
            "Convert an original HTS-AT .ckpt (Lightning or weight-averaged) into config.json, model.safetensors "
            "and preprocessor_config.json. The architecture is read from the checkpoint; the front end comes from "
            "the flags and is checked against the checkpoint's own mel filters. Released checkpoints: AudioSet "
            "--sample-rate 32000 --hop-length 320 --labels class_labels_indices.csv; ESC-50 --sample-rate 32000 "
            "--hop-length 320 --problem-type single_label_classification --pad-mode repeat; Speech Commands V2 "
            "--sample-rate 16000 --hop-length 160 --pad-mode repeat. OUTPUT_DIR must be new or empty (--overwrite "
            "replaces it as a whole) and may not contain the checkpoint or the labels file; it appears only when "
            "complete."
        ),
        formatter_class=_HelpFormatter,
    )
    convert.add_argument("checkpoint", help="original .ckpt file")
    convert.add_argument("output_dir", help="directory to write the converted model to")
    convert.add_argument(
        "--sample-rate", type=_whole_number(1), required=True, help="sampling rate the model was trained at (Hz)"
    )
    convert.add_argument("--hop-length", type=_whole_number(1), required=True, help="STFT hop in samples")
    convert.add_argument("--n-fft", type=_whole_number(2), default=1024, help="FFT size and window length")
    convert.add_argument("--mel-bins", type=_whole_number(1), default=64, help="number of mel bins")
    convert.add_argument("--fmin", type=_frequency, default=50.0, help="lowest mel frequency (Hz)")
    convert.add_argument("--fmax", type=_frequency, default=14000.0, help="highest mel frequency (Hz)")
    convert.add_argument(
        "--problem-type",
        choices=["multi_label_classification", "single_label_classification"],
        default="multi_label_classification",
        help="sigmoid scores (multi-label) or softmax scores (single-label)",
    )
    convert.add_argument("--labels", help="class_labels_indices.csv-style file with the class names")
    convert.add_argument(
        "--pad-mode", choices=["zeros", "repeat"], default="zeros", help="how the feature extractor pads short clips"
    )
    convert.add_argument(
        "--max-length-seconds",
        type=_seconds(positive=True),
        default=None,
        help="clip length of the model (default: 10 s, or the longest clip the model reads when that is shorter)",
    )
    convert.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT_DIR as a whole when it exists and is not empty (default: refuse)",
    )
    convert.set_defaults(handler=_convert)
    _add_convert_clap(commands)
    _add_predict(commands)
    _add_average(commands)
    _add_export_onnx(commands)
    _add_card(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0, 1 for `predict` files that could not be read, 2 for bad input).
    Bad arguments exit with status 2 while parsing (`SystemExit`), as argparse does, after the same one line; Ctrl-C
    ends it with status 130, and SIGTERM or SIGHUP with 128 + the signal's number, after one line and with staged
    outputs removed."""
    args = build_parser().parse_args(argv)
    try:
        with stop_signals_raise():
            return args.handler(args)
    except (InputError, OSError) as error:
        _error(args.command, error)
        return 2
    except KeyboardInterrupt:
        print(f"htsat-hf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Stopped as stop:
        print(f"htsat-hf {args.command}: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
