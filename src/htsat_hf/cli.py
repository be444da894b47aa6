"""The `htsat-hf` command line."""

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
    from .convert_htsat_original_checkpoint import CheckpointError, convert_checkpoint

    try:
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
        )
    except CheckpointError as error:
        print(f"htsat-hf convert: error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="htsat-hf", description="HTS-AT models for Hugging Face transformers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert an original HTS-AT checkpoint into a transformers model directory",
        description=(
            "Convert an original HTS-AT .ckpt (Lightning or weight-averaged) into config.json, model.safetensors "
            "and preprocessor_config.json. The architecture is read from the checkpoint; the front end comes from "
            "the flags and is checked against the checkpoint's own mel filters. Released checkpoints: AudioSet "
            "--sample-rate 32000 --hop-length 320 --labels class_labels_indices.csv; ESC-50 --sample-rate 32000 "
            "--hop-length 320 --problem-type single_label_classification --pad-mode repeat; Speech Commands V2 "
            "--sample-rate 16000 --hop-length 160 --pad-mode repeat."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    convert.add_argument("checkpoint", help="original .ckpt file")
    convert.add_argument("output_dir", help="directory to write the converted model to")
    convert.add_argument("--sample-rate", type=int, required=True, help="sampling rate the model was trained at (Hz)")
    convert.add_argument("--hop-length", type=int, required=True, help="STFT hop in samples")
    convert.add_argument("--n-fft", type=int, default=1024, help="FFT size and window length")
    convert.add_argument("--mel-bins", type=int, default=64, help="number of mel bins")
    convert.add_argument("--fmin", type=float, default=50.0, help="lowest mel frequency (Hz)")
    convert.add_argument("--fmax", type=float, default=14000.0, help="highest mel frequency (Hz)")
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
    convert.add_argument("--max-length-seconds", type=float, default=10.0, help="clip length of the model")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
