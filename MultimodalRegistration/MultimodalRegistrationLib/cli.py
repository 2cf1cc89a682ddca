"""``mmreg``: the command line of MultimodalRegistration.

Subcommands: register, batch, convert, train, evaluate, evaluate-gan, simulate, demo.
Errors meant for users print one line on stderr and exit with code 2; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import MMRegError

# subcommand -> (module providing add_arguments/run_cli, help)
DELEGATED = {
    "batch": ("batch", "register every case of a manifest CSV or folder, resumably, with a summary.csv"),
    "convert": ("translate", "convert a stack ceT1<->T2 slice by slice with the NICE-GAN"),
    "train": ("train", "train the NICE-GAN translator (resumable)"),
    "evaluate": ("evaluate", "registration benchmark on simulated cases with known ground truth"),
    "evaluate-real": ("evaluate_real", "registration on real contrasts: real ceT1/T1 stacks vs T2, exact truth"),
    "evaluate-gan": ("evaluate_gan", "GAN conversion quality on held-out slices (paper Table 1)"),
}


def make_progress(mode: str):
    from .progress import bar_progress, json_progress

    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "none"
    return {"json": json_progress(), "bar": bar_progress(), "none": None}[mode]


def add_progress_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", choices=("auto", "json", "bar", "none"), default="auto",
                   help="progress on stderr: JSON lines (for the Slicer module), a bar, or nothing "
                        "(default: a bar on a terminal, nothing otherwise)")


def add_register_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coronal", required=True, help="coronal contrast-enhanced T1 stack (NIfTI)")
    p.add_argument("--axial", required=True, help="axial T2 stack (NIfTI)")
    p.add_argument("--out", required=True, help="output folder (created; existing outputs are replaced)")
    p.add_argument("--coronal-labels", help="label map on the coronal grid (optional)")
    p.add_argument("--axial-labels", help="label map on the axial grid (optional)")
    add_pipeline_arguments(p)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("search-cr", "search-ncc", "ours", "paper", "mi"), default="search-cr",
                   help="search-cr (default): global search + 6-DOF correlation-ratio refinement on the original "
                        "ceT1, with a forward/backward consistency check; search-ncc (old name: ours): the same "
                        "engine with NCC on the translator's synthetic T2; paper: the paper's subset search; "
                        "mi: SimpleITK mutual-information baseline")
    p.add_argument("--translator", default="default",
                   help="'default' (bundled NICE-GAN), 'none' (intensity normalisation only) or a .safetensors path")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-mode", choices=("linear", "nearest"), default="linear",
                   help="label interpolation: per-label linear + argmax (default) or nearest neighbour")
    p.add_argument("--force-orientation", action="store_true",
                   help="accept stacks whose direction cosines do not say coronal/axial")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (repeatable), e.g. --param lr0=4 --param iterations=30")
    p.add_argument("--polish", choices=("auto", "always", "never"), default="auto",
                   help="a reported last resort: refine with SimpleITK mutual information on the original ceT1. "
                        "auto (default): only for search-ncc, when its NCC result is flagged unsuccessful; "
                        "always (search-ncc or search-cr); never")
    p.add_argument("--no-figure", action="store_true", help="skip report.png")
    add_progress_argument(p)


def parse_method_params(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise MMRegError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def params_from_args(args):
    from .pipeline import Params

    return Params(method=args.method, translator=args.translator, device=args.device, seed=args.seed,
                  label_mode=args.label_mode, force_orientation=args.force_orientation,
                  method_params=parse_method_params(args.param), polish=args.polish,
                  report_png=not args.no_figure)


def cmd_register(args) -> int:
    from .pipeline import run_case

    t = run_case(args.coronal, args.axial, args.out, coronal_labels=args.coronal_labels,
                 axial_labels=args.axial_labels, params=params_from_args(args),
                 progress=make_progress(args.progress))
    status = "success" if t["success"] else "FLAGGED UNSUCCESSFUL (check report.png)"
    print(f"{t['method']}: metric {t['metric']:.6g}, {status}, {t['seconds']:.1f} s, translator {t['translator']}"
          f" -> {args.out}")
    return 0


def cmd_simulate(args) -> int:
    from . import simulate
    from .volume import load_volume

    if args.source:
        src = simulate.load_brats_source(args.source)
    else:
        if not (args.cet1 and args.t2):
            raise MMRegError("give --source NAME, or --cet1 and --t2 (co-registered isotropic volumes)")
        src = simulate.SourceCase(name=Path(args.cet1).name, cet1=load_volume(args.cet1), t2=load_volume(args.t2),
                                  labels=load_volume(args.labels, labels=True) if args.labels else None)
    params = simulate.PRESETS[args.preset]
    if args.header_rot is not None:
        params.header_rot_deg = args.header_rot
    if args.header_shift is not None:
        params.header_shift_mm = args.header_shift
    case = simulate.simulate_case(src, seed=args.seed, params=params)
    simulate.save_case(case, args.out)
    print(f"simulated case (seed {args.seed}, preset {args.preset}) -> {args.out}")
    return 0


def cmd_demo(args) -> int:
    from . import sample

    return sample.run_demo(args.out, method=args.method, translator=args.translator,
                           progress=make_progress(args.progress))


def build_parser(only: str | None = "*") -> argparse.ArgumentParser:
    """The parser; ``only`` names the one delegated subcommand whose module is imported ("*": all, None:
    none). ``main`` imports only the module of the command it runs: importing all of them (torch, the
    GAN, the benchmarks) cost every `mmreg register` start-up time."""
    parser = argparse.ArgumentParser(prog="mmreg", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register", help="register one coronal ceT1 stack to one axial T2 stack")
    add_register_arguments(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("simulate", help="make a simulated thick-slice case with known ground truth")
    p.add_argument("--source", help="a BraTS case name from ../shared/data (see simulate.BRATS_CASES)")
    p.add_argument("--cet1", help="isotropic ceT1 volume (instead of --source)")
    p.add_argument("--t2", help="isotropic T2 volume co-registered with --cet1")
    p.add_argument("--labels", help="labels on the --cet1 grid")
    p.add_argument("--preset", choices=("paper", "fast", "bench"), default="paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--header-rot", type=float, help="max rotation (deg) of the header offset")
    p.add_argument("--header-shift", type=float, help="max translation (mm) of the header offset")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="run the pipeline on the bundled sample case and check it against its ground truth")
    p.add_argument("--out", default="mmreg_demo", help="output folder (default: ./mmreg_demo)")
    p.add_argument("--method", choices=("search-cr", "search-ncc", "ours", "paper", "mi"), default="search-cr")
    p.add_argument("--translator", default="default")
    add_progress_argument(p)
    p.set_defaults(func=cmd_demo)

    for name, (module, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text)
        if only != "*" and name != only:
            continue
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ImportError as exc:
            p.set_defaults(func=_unavailable(name, exc))
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.run_cli)
    return parser


def _unavailable(name, exc):
    def run(_args):
        raise MMRegError(f"'mmreg {name}' is unavailable: {exc}")
    return run


def _requested_command(argv) -> str | None:
    for tok in (sys.argv[1:] if argv is None else list(argv)):
        if not str(tok).startswith("-"):
            return str(tok)
    return None


def main(argv=None) -> int:
    parser = build_parser(only=_requested_command(argv))
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except MMRegError as exc:
        if args.debug:
            raise
        print(f"mmreg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"mmreg {args.command}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the "
              f"traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
