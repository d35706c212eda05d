"""The ``ssn`` command line: train, evaluate, calibrate, sample, convert, demo, info.

Errors a user can fix (a wrong flag, a bad setting, a missing file, bad data: every
:class:`~ssn.errors.UserError`) print one line, ``ssn: error: ...``, and exit with code 2.
Anything else is a bug: it keeps its traceback and exits with code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import platform
import sys
import typing
from collections.abc import Callable

from .._version import __version__
from ..errors import ConfigError, UserError

EXAMPLES = {
    "train": """examples:
  ssn train --data lidc.npz --out runs/ssn --split-file split.json --max-minutes 40
  ssn train --data lidc.npz --out runs/diag --rank 0 --epochs 10
  ssn train --data lidc.npz --out runs/det --method deterministic --config train.yaml
  ssn train --data lidc.npz --out runs/pu --method prob-unet --encoder-features 16 32 64 128
  ssn train --data lidc.npz --out runs/ssn --model phiseg-unet --model-kwargs '{features: [16, 32, 64, 96, 96, 96, 96]}'
  ssn train --data lidc.npz --out runs/monai --model monai:BasicUNet --model-kwargs '{features: [16, 16, 32, 64, 128, 16]}'
  ssn train --out runs/ssn --resume                        # continue the run exactly, with its own settings""",
    "evaluate": """examples:
  ssn evaluate --run runs/ssn --data lidc.npz --split test --split-file split.json --out metrics.json
  ssn evaluate --run runs/ssn --data synthetic.npz --samples 16
  ssn evaluate --run runs/ssn --data lidc.npz --split test --split-file split.json --temperature 1
  ssn evaluate --run runs/brats --data brats.json --split test --samples 20 --out brats_test.json""",
    "calibrate": """examples:
  ssn calibrate --run runs/ssn --data lidc.npz --split val --split-file split.json
  ssn calibrate --run runs/ssn --data lidc.npz --split val --split-file split.json --temperatures 0.5 0.7 1""",
    "sample": """examples:
  ssn sample --run runs/ssn --input scan.png --samples 16 --out samples/
  ssn sample --run runs/ssn --input test.npz --samples 100
  ssn sample --run runs/brats --input brats.json --split test --samples 20 --out samples/
  ssn sample --run runs/brats --input case_folder/ --out samples/
  ssn sample --run runs/brats --input flair.nii.gz t1c.nii.gz --out samples/""",
    "convert": """examples:
  ssn convert png-tree LIDC_PNGS/ --out lidc.npz
  ssn convert pickle data_lidc.pickle --out lidc.npz
  ssn convert phiseg-hdf5 data_lidc.hdf5 --out lidc.npz --split-out phiseg_split.json
  ssn convert brats brats_deepmedic/ --out brats.json --sequences flair t1c""",
    "explore": """examples:
  ssn explore --run ssn_demo/low_rank_SSN --data ssn_demo/synthetic.npz
  ssn explore --run pretrained:lidc-2d --data lidc.npz --port 7861""",
    "demo": """examples:
  ssn demo
  ssn demo --out demo_run --minutes 1
  ssn demo --3d                        # the volume path: NIfTI in and out""",
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
    for name, (help_text, add_flags, handler) in _COMMANDS.items():
        command = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_flags(command)
        if name != "info":
            command.add_argument(
                "--threads",
                type=int,
                help="CPU threads for torch (default: OMP_NUM_THREADS if set, else torch's choice); this flag wins",
            )
        command.set_defaults(handler=handler)
    return parser


_RUN_HELP = (
    "run directory written by ssn train, or pretrained:NAME (a shipped model; `ssn info` lists them); "
    "--run-dir under torchrun, whose own --run-path takes --run"
)
_TEMPERATURE_HELP = "sampling temperature (default: the run's calibrated one, else 1)"


def _add_run_flag(parser: argparse.ArgumentParser, help_text: str = _RUN_HELP) -> None:
    parser.add_argument("--run", "--run-dir", dest="run", required=True, help=help_text)


def _add_draw_flags(parser: argparse.ArgumentParser, samples: int, temperature: bool = True) -> None:
    """--samples, --device, --seed and (optionally) --temperature: how the samples are drawn."""
    parser.add_argument("--samples", type=int, default=samples, help=f"samples per image (default {samples})")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    if temperature:
        parser.add_argument("--temperature", type=float, help=_TEMPERATURE_HELP)


def _train_flags(t: argparse.ArgumentParser) -> None:
    _add_train_flags(t)
    t.add_argument("--deterministic", action="store_true", default=None, help="the same as --method deterministic")
    t.add_argument("--config", help="YAML file of the same settings (flags override it)")


def _evaluate_flags(e: argparse.ArgumentParser) -> None:
    _add_run_flag(e)
    e.add_argument("--data", required=True, help="dataset .npz, or a volume list .json")
    e.add_argument("--split", help="split name (with --split-file, or of a volume list; default test)")
    e.add_argument("--split-file", help="JSON split file; without it every image is used")
    e.add_argument("--out", help="metrics JSON to write (a per-image CSV goes beside it)")
    e.add_argument("--batch-size", type=int, default=16)
    _add_draw_flags(e, samples=100)
    e.add_argument(
        "--classes",
        choices=("present", "all"),
        help="the classes 1 - IoU averages over: present (in either map; Flow-SSN, MoSE; the default) or all "
        "(every foreground class, absent from both counting as IoU 1; PHiSeg, the official SSN, CCDM). "
        "They agree for two classes. Volumes report both unless one is given",
    )
    e.add_argument(
        "--matching",
        choices=("repeat", "rectangular"),
        default="repeat",
        help="Hungarian-matched IoU: repeat both sets to lcm(N, A) (CCDM, MoSE; the default) or match the "
        "N x A matrix as it is (Flow-SSN); the summary holds both, this one as hm_iou",
    )
    _add_window_flags(e)


def _calibrate_flags(k: argparse.ArgumentParser) -> None:
    _add_run_flag(k)
    k.add_argument("--data", required=True, help="dataset .npz, or a volume list .json (its validation cases)")
    k.add_argument("--split", help="split name (with --split-file, or of a volume list; default val / validation)")
    k.add_argument("--split-file", help="JSON split file; without it every image is used")
    k.add_argument(
        "--max-images",
        type=int,
        help="at most this many images, drawn with --seed (default 512; volumes: cases, default 64)",
    )
    k.add_argument("--temperatures", type=float, nargs="+", help="the grid to try (default 0.1 ... 2)")
    k.add_argument("--batch-size", type=int, default=16)
    k.add_argument(
        "--out", help="calibration JSON to write (default: the run's calibration.json; needed for pretrained:NAME)"
    )
    _add_draw_flags(k, samples=16, temperature=False)
    _add_window_flags(k)


def _sample_flags(s: argparse.ArgumentParser) -> None:
    _add_run_flag(s)
    s.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="image (.png, .npy), dataset .npz; or volumes: a list .json, a case folder, or NIfTI files (one per channel)",
    )
    s.add_argument("--split", help="volume lists: the split to sample (default: every case)")
    s.add_argument("--out", default="samples", help="output folder (default ./samples)")
    s.add_argument("--figures", type=int, default=16, help="figures for the first N images (default 16)")
    _add_draw_flags(s, samples=16)
    _add_window_flags(s)


def _convert_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "kind",
        choices=["png-tree", "pickle", "phiseg-hdf5", "brats", "lidc-3d"],
        help="input format (lidc-3d: see below)",
    )
    c.add_argument("source", help="input folder (png-tree, brats) or file")
    c.add_argument(
        "--out",
        required=True,
        help="dataset .npz to write (brats: the volume list .json; lidc-3d: a folder for the nodule volumes and lidc3d.json)",
    )
    c.add_argument(
        "--split-file", help="lidc-3d only: the patient-level split.json (default: split.json beside the .npz)"
    )
    c.add_argument("--split-out", help="phiseg-hdf5 only: also write its train/val/test split as JSON")
    c.add_argument(
        "--sequences",
        nargs="+",
        help="brats only: the input channels, in order, from flair t1 t1c t2 (default: those every case has)",
    )
    c.add_argument(
        "--split",
        default="test",
        help="brats only: the split of cases outside train/validation/test folders (default test)",
    )


def _demo_flags(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out", default="ssn_demo", help="output folder (default ./ssn_demo)")
    d.add_argument("--minutes", type=float, default=0.8, help="training minutes per model (default 0.8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--3d",
        dest="volumes",
        action="store_true",
        help="the volume path instead: synthetic NIfTI volumes, patch training, sliding windows, NIfTI outputs",
    )


def _explore_flags(x: argparse.ArgumentParser) -> None:
    _add_run_flag(x, "run directory written by ssn train (an SSN), or pretrained:NAME")
    x.add_argument("--data", help="dataset .npz whose images can be picked")
    x.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    x.add_argument("--port", type=int, default=7860)
    x.add_argument("--device", default="cpu")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per setting of TrainConfig, with its help text and default from there."""
    from ..engine.config import TrainConfig, setting_types

    for f in TrainConfig.flag_fields():
        flag = "--" + f.name.replace("_", "-")
        hint, _ = setting_types()[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata["help"] + (f" (default {default})" if default not in (None, "") else "")
        options = {"help": text, "default": None}  # None: not given (--data may come from --config)
        if hint is bool:
            options.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(hint) is list:
            options.update(type=int, nargs="+")
        elif hint is dict:
            options.update(type=_mapping, metavar="YAML")
        else:
            options["type"] = hint
        if f.name == "method":
            from ..models import available_methods

            options["choices"] = available_methods()
        parser.add_argument(flag, **options)


def _add_window_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="volumes: the sliding window (default: the run's training patch size)",
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="volumes: overlap of the sliding windows (default 0.5)"
    )


def _mapping(text: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML or JSON mapping such as '{{width: 8}}', got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    from ..engine import TrainConfig, train

    train(TrainConfig(**train_settings(args)))
    return 0


def train_settings(args: argparse.Namespace) -> dict:
    """The settings of ``ssn train ARGS`` (its ``--config`` file overridden by its flags), checked
    against the method, and a resumed run's own settings where ``--resume`` is given."""
    from ..engine.config import read_yaml

    from_file = read_yaml(args.config) if args.config else {}
    settings = dict(from_file)
    flags = {
        k: v for k, v in vars(args).items() if k not in ("command", "handler", "config", "threads") and v is not None
    }
    if flags.pop("deterministic", None):
        if flags.get("method", "deterministic") != "deterministic":
            raise ConfigError(f"--deterministic and --method {flags['method']} contradict each other: give one")
        flags["method"] = "deterministic"
    settings.update(flags)
    _check_method_settings(settings, given=set(flags) | set(from_file))
    if settings.get("resume"):
        from ..engine.rundir import RunDir

        if not settings.get("out"):
            raise ConfigError("--resume needs --out, the run directory to continue")
        settings = RunDir(settings["out"]).resumed_settings(settings)
    return settings


def _check_method_settings(settings: dict, given: set[str]) -> None:
    """Refuse a setting given for a method that does not take it (``--rank`` for the deterministic
    U-Net), rather than recording a value that means nothing."""
    from ..models.registry import available_methods, method_class

    method = settings.get("method", "ssn")
    if method not in available_methods():
        return  # TrainConfig names the choices
    own = set(method_class(method).settings)
    for other in available_methods():
        foreign = sorted((set(method_class(other).settings) - own) & given)
        if foreign:
            names = ", ".join(f"--{name.replace('_', '-')}" for name in foreign)
            raise ConfigError(
                f"{names}: a setting of the {other} method, which --method {method} does not take; drop it"
            )


def _evaluate(args: argparse.Namespace) -> int:
    from ..data.volume_list import is_volume_list
    from .evaluate import evaluate

    if is_volume_list(args.data):
        from .volumes import evaluate_volumes

        if args.split_file:
            raise ConfigError("a volume list carries its own splits; drop --split-file")
        evaluate_volumes(
            args.run,
            args.data,
            args.split or "test",
            args.samples,
            args.out,
            args.device,
            args.seed,
            args.temperature,
            args.window,
            args.overlap,
            classes=args.classes,
            matching=args.matching,
        )
        return 0
    _refuse_window_for_images(args)
    evaluate(
        args.run,
        args.data,
        args.split,
        args.split_file,
        args.samples,
        args.out,
        args.batch_size,
        args.device,
        args.seed,
        temperature=args.temperature,
        classes=args.classes or "present",
        matching=args.matching,
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ..data.volume_list import is_volume_list
    from .calibrate import DEFAULT_TEMPERATURES, calibrate, calibrate_volumes

    if is_volume_list(args.data):
        if args.split_file:
            raise ConfigError("a volume list carries its own splits; drop --split-file")
        calibrate_volumes(
            args.run,
            args.data,
            args.split or "validation",
            args.temperatures or DEFAULT_TEMPERATURES,
            args.samples,
            64 if args.max_images is None else args.max_images,
            args.device,
            args.seed,
            args.window,
            args.overlap,
            out=args.out,
        )
        return 0
    _refuse_window_for_images(args)
    calibrate(
        args.run,
        args.data,
        args.split,
        args.split_file,
        args.temperatures or DEFAULT_TEMPERATURES,
        args.samples,
        512 if args.max_images is None else args.max_images,
        args.batch_size,
        args.device,
        args.seed,
        out=args.out,
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sample import sample_run
    from .volumes import is_volume_input, sample_volumes

    if len(args.input) == 1 and os.path.isdir(args.input[0]) and _spatial_dims(args.run) != 3:
        from .sample import sample_folder

        if args.split:
            raise ConfigError("--split is for volume lists; a folder of images is sampled whole")
        _refuse_window_for_images(args)
        sample_folder(
            args.run, args.input[0], args.samples, args.out, args.device, args.seed, args.figures, args.temperature
        )
        return 0
    if is_volume_input(args.input) and (
        len(args.input) > 1 or _spatial_dims(args.run) == 3 or not args.input[0].lower().endswith((".nii", ".nii.gz"))
    ):
        sample_volumes(
            args.run,
            args.input,
            args.split,
            args.samples,
            args.out,
            args.device,
            args.seed,
            args.temperature,
            args.window,
            args.overlap,
        )
        return 0
    if len(args.input) > 1 or args.split:
        raise ConfigError("several --input files, and --split, are for volumes (NIfTI files or a volume list .json)")
    _refuse_window_for_images(args)
    sample_run(
        args.run,
        args.input[0],
        args.samples,
        args.out,
        args.device,
        args.seed,
        max_figures=args.figures,
        temperature=args.temperature,
    )
    return 0


def _refuse_window_for_images(args: argparse.Namespace) -> None:
    if args.window is not None or args.overlap != 0.5:
        raise ConfigError("--window and --overlap set the sliding windows over volumes; 2D images are predicted whole")


def _spatial_dims(run: str) -> int:
    """The spatial dims of a run's model (a 2D model takes a single NIfTI file as a 2D image)."""
    from ..engine.checkpoints import read_config
    from ..engine.pretrained import resolve_run_dir

    return int(read_config(resolve_run_dir(run))["architecture"]["spatial_dims"])


def _convert(args: argparse.Namespace) -> int:
    from ..data import converters
    from ..data.arrays import save_arrays
    from ..engine.checkpoints import write_json

    if args.split_out and args.kind != "phiseg-hdf5":
        raise ConfigError("--split-out applies to phiseg-hdf5 only (the other formats carry patient ids)")
    if args.sequences and args.kind != "brats":
        raise ConfigError("--sequences applies to brats only")
    if args.kind == "brats":
        return _convert_brats(args)
    if args.split_file and args.kind != "lidc-3d":
        raise ConfigError("--split-file applies to lidc-3d only")
    if args.kind == "lidc-3d":
        from ..data.lidc3d import convert_lidc_3d

        convert_lidc_3d(args.source, args.out, args.split_file)
        return 0
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


def _convert_brats(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from ..data.converters import index_brats
    from ..data.volume_list import load_volume_list
    from ..files import write_atomically

    if not args.out.lower().endswith(".json"):
        raise ConfigError(f"brats writes a volume list: --out must end in .json; got {args.out}")
    listing = index_brats(args.source, args.sequences, args.split)
    out, root = Path(args.out), Path(args.source)
    out.parent.mkdir(parents=True, exist_ok=True)

    def relative(path: str) -> str:
        """The file as the list names it, relative to the list: as the user spelled the folders (a
        root reached through a link stays behind the link), unless that spelling climbs out of a
        link and lands elsewhere; then the physical path."""
        spelled = os.path.relpath(os.path.abspath(root / path), os.path.abspath(out.parent))
        if (out.parent / spelled).resolve() == (root / path).resolve():
            return spelled
        return os.path.relpath((root / path).resolve(), out.parent.resolve())

    for key, cases in listing.items():
        if isinstance(cases, list) and key != "sequences":
            for case in cases:
                case["image"] = [relative(p) for p in case["image"]]
                if "label" in case:
                    case["label"] = (
                        [relative(p) for p in case["label"]]
                        if isinstance(case["label"], list)
                        else relative(case["label"])
                    )
                if "mask" in case:
                    case["mask"] = relative(case["mask"])
    write_atomically(out, lambda p: p.write_text(json.dumps(listing, indent=2) + "\n"))
    checked = load_volume_list(out)
    counts = ", ".join(f"{name} {len(cases)}" for name, cases in checked.splits.items())
    print(f"wrote {out}: {counts} cases; channels {', '.join(listing['sequences'])}; labels {listing['labels']}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, run_demo_3d

    if args.volumes:
        out = args.out if args.out != "ssn_demo" else "ssn_demo_3d"
        run_demo_3d(out, minutes=args.minutes if args.minutes != 0.8 else 1.0, seed=args.seed)
        return 0
    run_demo(args.out, minutes=args.minutes, seed=args.seed)
    return 0


def _explore(args: argparse.Namespace) -> int:
    from .explore import explore

    explore(args.run, args.data, args.host, args.port, args.device)
    return 0


def _info(args: argparse.Namespace) -> int:
    import torch

    from ..models import available_backbones, available_methods
    from ..networks import monai_nets

    print(f"ssn {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"methods: {', '.join(available_methods())}")
    print(f"backbones: {', '.join(available_backbones())}")
    from ..engine.pretrained import available_pretrained

    print(f"pretrained (ssn.pretrained(NAME), --run pretrained:NAME): {', '.join(available_pretrained()) or 'none'}")
    monai = monai_nets.available()
    if monai:
        import monai as monai_package

        print(f"MONAI {monai_package.__version__} segmentation networks (backbones; see ssn.networks.monai_nets):")
        print("  " + ", ".join(monai))
    else:
        print("MONAI networks: not installed (pip install 'ssn[monai]')")
    return 0


def _set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads, whatever OMP_NUM_THREADS says."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads needs at least 1; got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        _set_threads(getattr(args, "threads", None))
        return args.handler(args)
    except UserError as error:
        print(f"ssn: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = f" writing {error.filename}" if error.filename else ""
        print(f"ssn: error: no space left on the device{where}; free some space or write elsewhere", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "command", None) == "train" and getattr(args, "out", None):
            hint = f"; continue from the last saved state with: ssn train --out {args.out} --resume"
        print(f"ssn: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        from ..distributed import launched_by_torchrun, leave

        if launched_by_torchrun():
            leave()  # the process group this command joined (a caller's own group is left to the caller)


#: name -> (help, the function adding its flags, its handler), in the order ``ssn --help`` lists them.
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "train": ("train an SSN (or a baseline) on a dataset .npz", _train_flags, _train),
    "evaluate": ("evaluate a run: GED^2, diversity, HM-IoU, Dice, ECE", _evaluate_flags, _evaluate),
    "calibrate": ("choose the sampling temperature of a run on validation data", _calibrate_flags, _calibrate),
    "sample": ("draw samples for new images and plot them", _sample_flags, _sample),
    "convert": (
        "convert LIDC distributions into a dataset .npz, or index a BraTS folder tree as a volume list",
        _convert_flags,
        _convert,
    ),
    "demo": ("train on synthetic data with a known answer and compare with baselines", _demo_flags, _demo),
    "explore": ("a local web page to steer a run's samples (pip install 'ssn[explorer]')", _explore_flags, _explore),
    "info": ("print versions, threads, the methods and the available backbones", lambda parser: None, _info),
}


if __name__ == "__main__":
    sys.exit(main())
