"""Product and lab apart (issue 15).

``MultimodalRegistrationLib`` (what ``register``, ``batch``, ``convert`` and ``demo`` need, shipped in the
Slicer extension) never imports ``MultimodalRegistrationLab`` (training, simulation, benchmarks: a source
checkout only). The lab's subcommands stay ``mmreg train | simulate | evaluate | evaluate-real |
evaluate-gan``; without the lab they fail with one line saying where to get it.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

MODULE_DIR = ROOT / "MultimodalRegistration"
LIB_DIR = MODULE_DIR / "MultimodalRegistrationLib"
LAB_DIR = MODULE_DIR / "MultimodalRegistrationLab"
LAB = "MultimodalRegistrationLab"
#: the lab's modules; none of these names may come back into the product
LAB_MODULES = {"train", "synth", "simulate", "evaluate", "evaluate_real", "evaluate_gan", "sample_case"}
LAB_COMMANDS = {"train": "train", "simulate": "simulate", "evaluate": "evaluate", "evaluate-real": "evaluate_real",
                "evaluate-gan": "evaluate_gan"}


def _product_modules() -> list[str]:
    names = []
    for path in sorted(LIB_DIR.rglob("*.py")):
        rel = path.relative_to(MODULE_DIR).with_suffix("")
        if rel.name == "__main__" or "__pycache__" in rel.parts:
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return names


def _shipped_scripts() -> list[str]:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    m = re.search(r"set\(\s*MODULE_PYTHON_SCRIPTS\b(.*?)\)", text, re.S)
    assert m, "no MODULE_PYTHON_SCRIPTS in the module's CMakeLists.txt"
    body = re.sub(r"#[^\n]*", "", m.group(1))
    return [s.replace("${MODULE_NAME}", "MultimodalRegistration") for s in body.split()]


#: Runs a snippet with MultimodalRegistrationLab made unimportable: every sys.path entry that holds it (this
#: checkout, an editable install of another one) is dropped, and ``where`` goes first.
_WITHOUT_LAB = """
import sys
from pathlib import Path
sys.path[:] = [p for p in sys.path if not (Path(p or ".") / "MultimodalRegistrationLab").exists()]
sys.path.insert(0, {where!r})
"""


def _run_without_lab(where, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    src = _WITHOUT_LAB.format(where=str(where)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(where))


def test_lab_holds_the_moved_modules_and_the_product_none_of_them():
    assert {p.stem for p in LAB_DIR.glob("*.py")} >= LAB_MODULES
    assert {p.stem for p in LIB_DIR.rglob("*.py")} & LAB_MODULES == set()


def test_no_product_file_imports_the_lab():
    """Statically: no import statement of the core names the lab (``cli`` reaches the lab's subcommands
    through ``importlib`` and the ``LAB_PACKAGE`` name, only when one of them is run)."""
    for path in sorted(LIB_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == LAB], f"{path.relative_to(ROOT)} imports the lab"


def test_every_product_module_imports_without_the_lab():
    """Each product module imports with the lab unimportable, and none pulls it in."""
    modules = _product_modules()
    assert "MultimodalRegistrationLib.cli" in modules and "MultimodalRegistrationLib.batch.runner" in modules
    r = _run_without_lab(MODULE_DIR, f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        from MultimodalRegistrationLib import cli
        cli.build_parser(only=None)
        assert not [m for m in sys.modules if m.split(".")[0] == {LAB!r}], "the product imported the lab"
        print("imported", len({modules!r}))
    """)
    assert r.returncode == 0, r.stderr
    assert f"imported {len(modules)}" in r.stdout


def test_shipped_scripts_hold_no_lab_module():
    scripts = _shipped_scripts()
    assert "MultimodalRegistrationLib/cli.py" in scripts and "MultimodalRegistrationLib/sample.py" in scripts
    assert [s for s in scripts if s.split("/")[0] == LAB] == []
    assert [s for s in scripts if s.endswith(".py") and s.rsplit("/", 1)[-1][:-3] in LAB_MODULES] == []


def test_lab_command_in_the_extension_says_it_is_a_developer_command(tmp_path):
    """The Slicer extension's files only (the CMake list): ``mmreg train`` exits 2 with one line."""
    for rel in _shipped_scripts():
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODULE_DIR / rel, dest)
    r = _run_without_lab(tmp_path, """
        from MultimodalRegistrationLib.cli import main
        sys.exit(main(["train", "--data", "x.npz", "--out", "ckpt"]))
    """)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mmreg train: error: 'mmreg train' is a developer command of MultimodalRegistrationLab")
    assert "pip install -e ." in lines[0]


@pytest.mark.parametrize("command", sorted(LAB_COMMANDS))
def test_every_lab_command_without_the_lab_exits_2(command, monkeypatch, capsys):
    from MultimodalRegistrationLib import cli

    for name in [m for m in sys.modules if m.split(".")[0] == LAB]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, LAB, None)  # import MultimodalRegistrationLab -> ModuleNotFoundError
    assert cli.main([command, "--out", "x", "--whatever", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'mmreg {command}' is a developer command" in err[0], err


@pytest.mark.parametrize("command", sorted(LAB_COMMANDS))
def test_lab_commands_are_dispatched_to_the_lab(command):
    from MultimodalRegistrationLib import cli

    package, module, _ = cli.DELEGATED[command]
    assert (package, module) == (LAB, LAB_COMMANDS[command])
    sub = cli.build_parser(only=command)._subparsers._group_actions[0].choices[command]
    import importlib
    assert sub.get_default("func") is importlib.import_module(f"{LAB}.{module}").run_cli


def test_lab_modules_run_with_python_m():
    """``python -m MultimodalRegistrationLab.<module> --help`` for each command-line module of the lab
    (one interpreter: runpy runs each as ``__main__``, as ``python -m`` does)."""
    modules = ["train", "synth", "simulate", "evaluate", "evaluate_real", "evaluate_gan"]
    code = textwrap.dedent(f"""
        import runpy, sys
        for m in {modules!r}:
            sys.argv = [m, "--help"]
            try:
                runpy.run_module("{LAB}." + m, run_name="__main__", alter_sys=True)
            except SystemExit as exc:
                assert exc.code == 0, (m, exc.code)
                print("ok", m)
    """)
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("ok ")] == [f"ok {m}" for m in modules]
