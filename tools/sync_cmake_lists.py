#!/usr/bin/env python3
"""Keep MultimodalRegistration/CMakeLists.txt listing every file the packaged module needs.

    python tools/sync_cmake_lists.py          # rewrite the two lists from the files on disk
    python tools/sync_cmake_lists.py --check  # exit 1 and print the differences instead

A Python file or resource missing from ``MODULE_PYTHON_SCRIPTS`` / ``MODULE_PYTHON_RESOURCES``
works from the source tree but is absent from the packaged extension. Listed:

* scripts: every ``*.py`` under ``MultimodalRegistration/`` except ``Testing/`` and the team's
  ``MultimodalRegistrationLab/`` (training, simulation, benchmarks: not shipped); the
  ``MultimodalRegistrationLib`` core is included;
* resources: every file under ``MultimodalRegistration/Resources/``.

Caches, dot-files and build products (``__pycache__``, ``*.pyc``, ``*.egg-info``) are ignored.
``Testing/slicer/test_slicer_packaging.py`` checks the same rule.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "MultimodalRegistration"
MODULE_DIR = ROOT / MODULE
CMAKE = MODULE_DIR / "CMakeLists.txt"
#: top-level folders of the module directory that the packaged extension does not ship
NOT_SHIPPED = ("Testing", "MultimodalRegistrationLab")
IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints"}


def _ignored(rel: Path) -> bool:
    return any(part in IGNORED_PARTS or part.startswith(".") or part.endswith(".egg-info")
               for part in rel.parts) or rel.suffix in (".pyc", ".pyo")


def scripts_on_disk(module_dir: Path = MODULE_DIR) -> list[str]:
    out = []
    for path in module_dir.rglob("*.py"):
        rel = path.relative_to(module_dir)
        if rel.parts[0] in NOT_SHIPPED or _ignored(rel):
            continue
        out.append(rel.as_posix())
    return sorted(out, key=lambda s: (s.count("/"), s))


def resources_on_disk(module_dir: Path = MODULE_DIR) -> list[str]:
    out = []
    for path in (module_dir / "Resources").rglob("*"):
        rel = path.relative_to(module_dir)
        if path.is_file() and not _ignored(rel):
            out.append(rel.as_posix())
    return sorted(out)


def parse_set(text: str, variable: str, module_name: str = MODULE) -> list[str]:
    """Items of ``set(<variable> ...)`` in a CMake file, with ``${MODULE_NAME}`` expanded."""
    m = re.search(r"set\(\s*" + re.escape(variable) + r"\b(.*?)\)", text, re.S)
    if m is None:
        raise ValueError(f"no set({variable} ...) in CMakeLists.txt")
    body = re.sub(r"#[^\n]*", "", m.group(1))
    return [item.replace("${MODULE_NAME}", module_name) for item in body.split()]


def _format(items: list[str]) -> str:
    return "".join(f"  {item.replace(MODULE + '.', '${MODULE_NAME}.', 1) if item.startswith(MODULE + '.') else item}\n"
                   for item in items)


def rewrite(text: str, scripts: list[str], resources: list[str]) -> str:
    def sub(variable, items, text):
        pattern = re.compile(r"(set\(\s*" + re.escape(variable) + r"\b)(.*?)(\))", re.S)
        if not pattern.search(text):
            raise ValueError(f"no set({variable} ...) in CMakeLists.txt")
        return pattern.sub(lambda m: m.group(1) + "\n" + _format(items) + "  " + m.group(3), text, count=1)

    return sub("MODULE_PYTHON_RESOURCES", resources, sub("MODULE_PYTHON_SCRIPTS", scripts, text))


def differences(text: str, module_dir: Path = MODULE_DIR) -> list[str]:
    problems = []
    for variable, on_disk in (("MODULE_PYTHON_SCRIPTS", scripts_on_disk(module_dir)),
                              ("MODULE_PYTHON_RESOURCES", resources_on_disk(module_dir))):
        listed = parse_set(text, variable)
        for item in sorted(set(on_disk) - set(listed)):
            problems.append(f"{variable}: {item} is on disk but not listed")
        for item in sorted(set(listed) - set(on_disk)):
            problems.append(f"{variable}: {item} is listed but not on disk")
        dupes = sorted({i for i in listed if listed.count(i) > 1})
        problems += [f"{variable}: {item} is listed twice" for item in dupes]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    text = CMAKE.read_text(encoding="utf-8")
    problems = differences(text)
    if args.check:
        print("\n".join(problems) if problems else "CMakeLists.txt lists match the files on disk")
        return 1 if problems else 0
    new = rewrite(text, scripts_on_disk(), resources_on_disk())
    if new != text:
        CMAKE.write_text(new, encoding="utf-8")
        print("updated " + str(CMAKE.relative_to(ROOT)))
        for p in problems:
            print("  " + p)
    else:
        print("CMakeLists.txt already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
