"""Minimal stand-ins for the ``slicer``, ``vtk``, ``qt`` and ``ctk`` modules.

Enough to import ``MultimodalRegistration/MultimodalRegistration.py`` outside Slicer and to drive the
parts of its Logic that do not touch the MRML scene (child-process state machine, command line,
matrix conversion). Any attribute not defined here is a class whose instances accept any call.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

MODULE_PY = Path(__file__).resolve().parents[1] / "MultimodalRegistration" / "MultimodalRegistration.py"


class Anything:
    """Any Slicer/VTK/Qt object: attribute access and calls give more of the same."""

    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()

    def __call__(self, *a, **k):
        return Anything()


class vtkMatrix4x4:
    """Enough of vtk.vtkMatrix4x4 for the module's matrix helpers."""

    def __init__(self):
        self._m = [[1.0 if r == c else 0.0 for c in range(4)] for r in range(4)]

    def SetElement(self, r, c, v):
        self._m[r][c] = float(v)

    def GetElement(self, r, c):
        return self._m[r][c]


class QTimer:
    def __init__(self):
        self.active = False
        self.interval = None
        self.callbacks = []

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, callback):
        self.callbacks.append(callback)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    def getattr_(attr):
        # vtkMRML*/q*/Upper-case names are classes; anything else (mrmlScene, app, ...) an object
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr[:1].isupper() or attr.startswith(("vtk", "q")):
            return type(attr, (Anything,), {})
        return Anything()

    mod.__getattr__ = getattr_
    return mod


def modules() -> dict:
    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    bases = dict(
        ScriptedLoadableModule=ScriptedLoadableModule,
        ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}),
        ScriptedLoadableModuleLogic=type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None}),
        ScriptedLoadableModuleTest=type("ScriptedLoadableModuleTest", (), {}),
    )
    slicer = _module("slicer")
    slicer.__path__ = []
    subs = {
        "ScriptedLoadableModule": _module("slicer.ScriptedLoadableModule", **bases),
        "util": _module("slicer.util", VTKObservationMixin=type("VTKObservationMixin", (), {}),
                        startupEnvironment=lambda: dict(os.environ)),
        "parameterNodeWrapper": _module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                        WithinRange=lambda lo, hi: ("WithinRange", lo, hi)),
        "i18n": _module("slicer.i18n", tr=lambda s: s, translate=lambda c, s: s),
    }
    mods = {"slicer": slicer}
    for name, mod in subs.items():
        setattr(slicer, name, mod)
        mods[f"slicer.{name}"] = mod
    mods.update({"vtk": _module("vtk", vtkMatrix4x4=vtkMatrix4x4), "qt": _module("qt", QTimer=QTimer),
                 "ctk": _module("ctk")})
    return mods


def install(monkeypatch) -> dict:
    """Put the stand-ins into sys.modules for the duration of a test (pytest monkeypatch)."""
    mods = modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods


def load_module(name: str = "_mmreg_module_under_test"):
    """Import MultimodalRegistration.py (stand-ins must be installed first)."""
    spec = importlib.util.spec_from_file_location(name, MODULE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
