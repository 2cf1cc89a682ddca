"""``mmreg``: the command line of MultimodalRegistration.

Subcommands: register, batch, convert, demo (the product); train, simulate, evaluate, evaluate-real,
evaluate-gan (the team's, from ``MultimodalRegistrationLab``: a source checkout only, not the Slicer extension).
Errors meant for users print one line on stderr and exit with code 2; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings

from . import __version__
from .errors import InputError, MMRegError
from .progress import add_progress_argument, progress_from_args

#: The team's package (training, simulation, benchmarks): installed by ``pip install -e .`` from a source
#: checkout, absent from the Slicer extension. The product never imports it; only these subcommands do.
LAB_PACKAGE = "MultimodalRegistrationLab"

# subcommand -> (package, module providing add_arguments/run_cli, help)
DELEGATED = {
    "batch": (__package__, "batch", "register every case of a manifest CSV or folder, resumably, with a summary.csv"),
    "convert": (__package__, "translate", "convert a stack ceT1<->T2 slice by slice with the NICE-GAN"),
    "train": (LAB_PACKAGE, "train", "(developer) train the NICE-GAN translator (resumable)"),
    "simulate": (LAB_PACKAGE, "simulate",
                 "(developer) make a simulated thick-slice case with known ground truth"),
    "evaluate": (LAB_PACKAGE, "evaluate",
                 "(developer) registration benchmark on simulated cases with known ground truth"),
    "evaluate-real": (LAB_PACKAGE, "evaluate_real",
                      "(developer) registration on real contrasts: real ceT1/T1 stacks vs T2, exact truth"),
    "evaluate-gan": (LAB_PACKAGE, "evaluate_gan",
                     "(developer) GAN conversion quality on held-out slices (paper Table 1)"),
}


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
    p.add_argument("--init", choices=("header", "center"), default=None,
                   help="where search-cr/search-ncc start: header (default: the files' positions, then a "
                        "global search) or center (the image centres, for headers whose positions are "
                        "meaningless). paper and mi always start from the image centres")
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

    method_params = parse_method_params(args.param)
    init = getattr(args, "init", None)
    if init is not None:
        if args.method in ("paper", "mi"):
            if init == "header":
                raise InputError(f"--init header: --method {args.method} always starts from the image centres "
                                 f"(as in the paper); use search-cr or search-ncc to start from the headers")
        elif "init" in method_params:
            raise InputError("give either --init or --param init=..., not both")
        else:
            method_params["init"] = "center" if init == "center" else "search"
    return Params(method=args.method, translator=args.translator, device=args.device, seed=args.seed,
                  label_mode=args.label_mode, force_orientation=args.force_orientation,
                  method_params=method_params, polish=args.polish,
                  report_png=not args.no_figure)


def cmd_register(args) -> int:
    from .pipeline import run_case

    t = run_case(args.coronal, args.axial, args.out, coronal_labels=args.coronal_labels,
                 axial_labels=args.axial_labels, params=params_from_args(args),
                 progress=progress_from_args(args))
    status = {True: "success", False: "FLAGGED UNSUCCESSFUL (check report.png)"}.get(
        t["success"], "success unknown (no calibrated check; see report.png)")
    print(f"{t['method']}: metric {t['metric']:.6g}, {status}, {t['seconds']:.1f} s, translator {t['translator']}"
          f" -> {args.out}")
    return 0


def cmd_demo(args) -> int:
    from . import sample

    return sample.run_demo(args.out, method=args.method, translator=args.translator,
                           progress=progress_from_args(args))


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

    p = sub.add_parser("demo", help="run the pipeline on the bundled sample case and check it against its ground truth")
    p.add_argument("--out", default="mmreg_demo", help="output folder (default: ./mmreg_demo)")
    p.add_argument("--method", choices=("search-cr", "search-ncc", "ours", "paper", "mi"), default="search-cr")
    p.add_argument("--translator", default="default")
    add_progress_argument(p)
    p.set_defaults(func=cmd_demo)

    for name, (package, module, help_text) in DELEGATED.items():
        p = sub.add_parser(name, help=help_text)
        if only != "*" and name != only:
            continue
        try:
            mod = importlib.import_module(f"{package}.{module}")
        except ImportError as exc:
            if package == LAB_PACKAGE and (exc.name or "").split(".")[0] == LAB_PACKAGE:
                # the whole lab package is absent (the Slicer extension ships the product only)
                p.set_defaults(func=_developer_only(name), lab_missing=True)  # its options are not known here
            else:
                p.set_defaults(func=_unavailable(name, exc))
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.run_cli)
    return parser


def _unavailable(name, exc):
    def run(_args):
        raise MMRegError(f"'mmreg {name}' is unavailable: {exc}")
    return run


def _developer_only(name):
    def run(_args):
        raise InputError(f"'mmreg {name}' is a developer command of {LAB_PACKAGE}, which is not installed here "
                         f"(the Slicer extension ships only register, batch, convert and demo); get it from a "
                         f"source checkout: pip install -e . in the MultimodalRegistration repository")
    return run


def _requested_command(argv) -> str | None:
    for tok in (sys.argv[1:] if argv is None else list(argv)):
        if not str(tok).startswith("-"):
            return str(tok)
    return None


def main(argv=None) -> int:
    parser = build_parser(only=_requested_command(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "lab_missing", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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


#: Commands whose process ends with os._exit once everything is written and flushed: the interpreter's
#: shutdown with torch loaded costs about 0.4 s (measured: 1.65 s against 1.26 s for `import torch`),
#: a tenth of a `mmreg register` run. Every output is closed (atomically renamed) and the thread pools
#: are shut down before the command returns, so nothing is lost.
FAST_EXIT_COMMANDS = ("register", "demo")


def entry(argv=None) -> None:
    """The ``mmreg`` executable (console script and ``python -m``): :func:`main`, then exit."""
    code = main(argv)
    if _requested_command(argv) in FAST_EXIT_COMMANDS:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
