"""The command line of the child process the Slicer module starts (Slicer-free, standard library only).

* the choices shown in the panel (method, translator, device, label mode) and their CLI spelling;
* :func:`build_register_command`, the argument list of ``mmreg register`` (the module runs the core
  as a child process with Slicer's Python, as SlicerMONAIAuto3DSeg does, and never registers
  in-process), and :func:`child_environment`, its environment.
"""
from __future__ import annotations

import enum
import os
import re
from typing import Mapping, Optional, Sequence

#: ``python -m`` target of the core's command line interface.
CLI_MODULE = "MultimodalRegistrationLib.cli"


# ---------------------------------------------------------------------------------------------
# Choices shown in the panel. The parameter node stores the enum member; the CLI gets ``.value``.
# ``label()`` is what parameterNodeWrapper's QComboBox connector shows.
# ---------------------------------------------------------------------------------------------

class Method(enum.Enum):
    SEARCH_CR = "search-cr"
    SEARCH_NCC = "search-ncc"
    PAPER = "paper"
    MI = "mi"

    def label(self) -> str:
        return {
            Method.SEARCH_CR: "Search + correlation ratio on the ceT1 (default)",
            Method.SEARCH_NCC: "Search + NCC on the synthetic T2",
            Method.PAPER: "Paper (greedy subset search, MSE)",
            Method.MI: "Mutual information baseline (SimpleITK)",
        }[self]


class Translator(enum.Enum):
    DEFAULT = "default"
    FILE = "file"
    NONE = "none"

    def label(self) -> str:
        return {
            Translator.DEFAULT: "Bundled NICE-GAN checkpoint",
            Translator.FILE: "Checkpoint file (.safetensors)",
            Translator.NONE: "None (register ceT1 directly)",
        }[self]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {Device.AUTO: "Automatic", Device.CPU: "CPU", Device.CUDA: "CUDA (GPU)"}[self]


class LabelMode(enum.Enum):
    LINEAR = "linear"
    NEAREST = "nearest"

    def label(self) -> str:
        return {LabelMode.LINEAR: "Per-label linear + argmax", LabelMode.NEAREST: "Nearest neighbour"}[self]


def _enum_value(enum_cls, value) -> str:
    """Accept an enum member or its CLI string; return the CLI string (ValueError otherwise)."""
    if isinstance(value, enum_cls):
        return value.value
    allowed = [m.value for m in enum_cls]
    if isinstance(value, str) and value in allowed:
        return value
    raise ValueError(f"{enum_cls.__name__.lower()} must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Command line of the child process
# ---------------------------------------------------------------------------------------------

def build_register_command(
    python: str,
    coronal: str | os.PathLike,
    axial: str | os.PathLike,
    out_dir: str | os.PathLike,
    coronal_labels: str | os.PathLike | None = None,
    axial_labels: str | os.PathLike | None = None,
    method: Method | str = Method.SEARCH_CR,
    translator: Translator | str = Translator.DEFAULT,
    translator_file: str | os.PathLike | None = None,
    device: Device | str = Device.AUTO,
    seed: Optional[int] = None,
    label_mode: LabelMode | str = LabelMode.LINEAR,
    method_params: str | Sequence[str] | None = None,
    init: str | None = None,
    debug: bool = False,
) -> list[str]:
    """Argument list of ``<python> -m MultimodalRegistrationLib.cli [--debug] register ...``.

    ``translator`` FILE needs ``translator_file`` (a ``.safetensors`` path, passed as the value of
    ``--translator``). ``method_params`` is ``"lr0=4 iterations=30"`` (or a list of ``KEY=VALUE``),
    each passed as ``--param KEY=VALUE``. ``init`` "center" or "header" is passed as ``--init`` (None: the
    method's default start). ``--debug`` is an option of ``mmreg`` itself, so it goes
    before the subcommand. Progress is always requested as JSON lines.
    """
    if not python:
        raise ValueError("no Python executable given (PythonSlicer not found?)")
    for name, value in (("coronal", coronal), ("axial", axial), ("out_dir", out_dir)):
        if value is None or str(value) == "":
            raise ValueError(f"{name} is required")
    translator_value = _enum_value(Translator, translator)
    if translator_value == Translator.FILE.value:
        if not translator_file or str(translator_file) in ("", "."):
            raise ValueError("choose a translator checkpoint file (.safetensors)")
        translator_arg = str(translator_file)
    else:
        translator_arg = translator_value

    if init not in (None, "center", "header"):
        raise ValueError(f"init must be 'center', 'header' or None, got {init!r}")
    params = parse_method_params(method_params)
    cmd = [str(python), "-m", CLI_MODULE] + (["--debug"] if debug else []) + [
        "register",
        "--coronal", str(coronal),
        "--axial", str(axial),
        "--out", str(out_dir),
    ]
    if coronal_labels:
        cmd += ["--coronal-labels", str(coronal_labels)]
    if axial_labels:
        cmd += ["--axial-labels", str(axial_labels)]
    cmd += [
        "--method", _enum_value(Method, method),
        "--translator", translator_arg,
        "--device", _enum_value(Device, device),
        "--label-mode", _enum_value(LabelMode, label_mode),
        "--progress", "json",
    ]
    if init is not None:
        cmd += ["--init", init]
    if seed is not None:
        cmd += ["--seed", str(int(seed))]
    for item in params:
        cmd += ["--param", item]
    return cmd


def parse_method_params(text: str | Sequence[str] | None) -> list[str]:
    """``"lr0=4, iterations=30"`` -> ``["lr0=4", "iterations=30"]`` (ValueError on a bad item)."""
    if text is None:
        return []
    if isinstance(text, str):
        items = re.sub(r"\s*=\s*", "=", text).replace(",", " ").replace(";", " ").split()
    else:
        items = list(text)
    out = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"method parameters are KEY=VALUE items, got {item!r}")
        out.append(f"{key.strip()}={value.strip()}")
    return out


def child_environment(module_dir: str | os.PathLike, base_env: Mapping[str, str] | None = None) -> dict:
    """Environment for the child: ``module_dir`` first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base_env is None else base_env)
    parts = [str(module_dir)]
    if env.get("PYTHONPATH"):
        parts += [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p != str(module_dir)]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env

