"""The ``ssn`` command line: train, evaluate, sample, demo, info.

Errors a user can fix (a wrong flag, a missing file, bad data) print one line, ``ssn: error:
...``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path

from . import __version__

EXAMPLES = {
    "train": """examples:
  ssn train --data lidc.npz --out runs/ssn --split-file split.json --max-minutes 40
  ssn train --data lidc.npz --out runs/diag --rank 0 --epochs 10
  ssn train --data lidc.npz --out runs/det --deterministic --config train.yaml
  ssn train --data lidc.npz --out runs/ssn --resume        # continue from last.safetensors""",
    "evaluate": """examples:
  ssn evaluate --run runs/ssn --data lidc.npz --split test --split-file split.json --out metrics.json
  ssn evaluate --run runs/ssn --data synthetic.npz --samples 16""",
    "sample": """examples:
  ssn sample --run runs/ssn --input scan.png --samples 16 --out samples/
  ssn sample --run runs/ssn --input volume.nii.gz --out samples/
  ssn sample --run runs/ssn --input test.npz --samples 100""",
    "convert": """examples:
  ssn convert png-tree LIDC_PNGS/ --out lidc.npz
  ssn convert pickle data_lidc.pickle --out lidc.npz
  ssn convert phiseg-hdf5 data_lidc.hdf5 --out lidc.npz --split-out phiseg_split.json""",
    "demo": """examples:
  ssn demo
  ssn demo --out demo_run --minutes 1""",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssn",
        description="Stochastic Segmentation Networks: train, evaluate and sample coherent segmentations.",
        epilog="run `ssn COMMAND --help` for a command's flags and examples",
    )
    parser.add_argument("--version", action="version", version=f"ssn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    t = command("train", "train an SSN (or a baseline) on a dataset .npz")
    t.add_argument("--data", required=True, help="dataset .npz (images, masks[, patient])")
    t.add_argument("--out", required=True, help="run directory to write (config, weights, logs)")
    t.add_argument("--split-file", help='JSON {"splits": {"train": [...], "val": [...]}}; default: hold out 10%% of patients')
    t.add_argument("--train-split", help="split name to train on (default train)")
    t.add_argument("--val-split", help="split name to validate on (default val)")
    t.add_argument("--model", help="backbone name (default unet)")
    t.add_argument("--features", type=int, nargs="+", help="backbone channels per level (default 32 64 128 256)")
    t.add_argument("--rank", type=int, help="covariance rank; 0 = the diagonal model (default 10)")
    t.add_argument("--mc-samples", type=int, help="Monte Carlo samples in the loss, even (default 20)")
    t.add_argument("--deterministic", type=_bool, nargs="?", const=True, help="train the plain-softmax baseline")
    t.add_argument("--epochs", type=int, help="number of epochs (default 20 unless --max-minutes)")
    t.add_argument("--max-minutes", type=float, help="stop after this many minutes")
    t.add_argument("--batch-size", type=int, help="images per step (default 16)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    t.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    t.add_argument("--augment", type=_bool, help="flips and small rotations (default true)")
    t.add_argument("--val-images", type=int, help="fixed validation subset size (default 128)")
    t.add_argument("--val-samples", type=int, help="samples per validation image (default 16)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--device", help="cpu or cuda (default cpu)")
    t.add_argument("--resume", action="store_const", const=True, help="continue the run in --out")
    t.add_argument("--config", help="YAML file of the same settings (flags override it)")
    t.set_defaults(handler=_train)

    e = command("evaluate", "evaluate a run: GED^2, diversity, HM-IoU, Dice, ECE")
    e.add_argument("--run", required=True, help="run directory written by ssn train")
    e.add_argument("--data", required=True, help="dataset .npz")
    e.add_argument("--split", help="split name (with --split-file; default test)")
    e.add_argument("--split-file", help="JSON split file; without it every image is used")
    e.add_argument("--samples", type=int, default=100, help="samples per image (default 100)")
    e.add_argument("--out", help="metrics JSON to write (a per-image CSV goes beside it)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(handler=_evaluate)

    s = command("sample", "draw samples for new images and plot them")
    s.add_argument("--run", required=True, help="run directory written by ssn train")
    s.add_argument("--input", required=True, help="image (.png, .npy, .nii[.gz]) or dataset .npz")
    s.add_argument("--samples", type=int, default=16, help="samples per image (default 16)")
    s.add_argument("--out", default="samples", help="output folder (default ./samples)")
    s.add_argument("--figures", type=int, default=16, help="figures for the first N images (default 16)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=_sample)

    c = command("convert", "convert LIDC distributions into the dataset .npz format")
    c.add_argument("kind", choices=["png-tree", "pickle", "phiseg-hdf5"], help="input format")
    c.add_argument("source", help="input folder (png-tree) or file")
    c.add_argument("--out", required=True, help="dataset .npz to write")
    c.add_argument("--split-out", help="phiseg-hdf5 only: also write its train/val/test split as JSON")
    c.set_defaults(handler=_convert)

    d = command("demo", "train on synthetic data with a known answer and compare with baselines")
    d.add_argument("--out", default="ssn_demo", help="output folder (default ./ssn_demo)")
    d.add_argument("--minutes", type=float, default=0.8, help="training minutes per model (default 0.8)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(handler=_demo)

    i = command("info", "print versions, threads and the available backbones")
    i.set_defaults(handler=_info)
    return parser


def _train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    settings = {}
    if args.config:
        settings.update(_read_yaml(args.config))
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config") and v is not None}
    settings.update(flags)
    train(TrainConfig(**settings))
    return 0


def _read_yaml(path: str) -> dict:
    import yaml

    from .training import TrainConfig

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    content = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path} must be a YAML mapping of settings, e.g. `rank: 10`")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k.replace("-", "_"): v for k, v in content.items()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return settings


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    evaluate(args.run, args.data, args.split, args.split_file, args.samples, args.out, args.batch_size, args.device, args.seed)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sampling import sample_run

    sample_run(args.run, args.input, args.samples, args.out, args.device, args.seed, max_figures=args.figures)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints import write_json
    from .data import converters
    from .data.arrays import save_arrays

    if args.split_out and args.kind != "phiseg-hdf5":
        raise ValueError("--split-out applies to phiseg-hdf5 only (the other formats carry patient ids)")
    if args.kind == "png-tree":
        data = converters.png_tree(args.source)
    elif args.kind == "pickle":
        data = converters.probabilistic_unet_pickle(args.source)
    else:
        data, split = converters.phiseg_hdf5(args.source)
        if args.split_out:
            write_json({"splits": split}, args.split_out)
    save_arrays(args.out, data)
    print(f"wrote {args.out}: {len(data)} images {data.images.shape[1:]}, {data.num_annotators} annotators")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, minutes=args.minutes, seed=args.seed)
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    from .models import available_backbones

    print(f"ssn {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"backbones: {', '.join(available_backbones())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .data.arrays import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (DataError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"ssn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
