"""The registration package's typed parameters (from dicts and ``--param KEY=VALUE`` strings), the one
device resolver, and what importing the package costs (no torch for ``mi``)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from MultimodalRegistrationLib import cli
from MultimodalRegistrationLib.device import resolve_device
from MultimodalRegistrationLib.errors import InputError
from MultimodalRegistrationLib.registration import (METHODS, PARAMS, MiParams, PaperParams, SearchCrParams,
                                                    SearchNccParams, params_for, register)
from MultimodalRegistrationLib.registration import params as params_mod


def test_every_method_has_a_parameter_class_whose_defaults_are_valid():
    assert set(PARAMS) == set(METHODS)
    for method, cls in PARAMS.items():
        assert cls.METHOD == method
        assert cls.from_dict({}) == cls()
        assert params_for(method, None) == cls()


def test_unknown_key_names_it_and_the_valid_ones():
    with pytest.raises(InputError) as exc:
        SearchNccParams.from_dict({"levels": [4, 2]})
    msg = str(exc.value)
    assert "unknown parameter(s) for method 'search-ncc': levels;" in msg
    assert "valid: " in msg and "levels_mm" in msg and "init" in msg and "\n" not in msg
    # search-cr's own options are not search-ncc's: the engine checks its own set
    with pytest.raises(InputError, match="consistency"):
        SearchNccParams.from_dict({"consistency": False})
    with pytest.raises(InputError, match="unknown parameter.*'paper'.*bogus"):
        PaperParams.from_dict({"bogus": 1})


@pytest.mark.parametrize("cls,values,field", [
    (PaperParams, {"n_iter": 2.5}, "n_iter"),            # not an integer
    (PaperParams, {"lr0": "fast"}, "lr0"),               # not a number
    (PaperParams, {"lr0": True}, "lr0"),                 # a bool is not a number
    (SearchCrParams, {"consistency": "maybe"}, "consistency"),
    (SearchNccParams, {"init": 3}, "init"),              # a number is not a string
    (SearchNccParams, {"levels_mm": ["a", "b"]}, "levels_mm"),
    (SearchNccParams, {"initial_transform": np.eye(3)}, "initial_transform"),
    (MiParams, {"threads": "two"}, "threads"),
])
def test_wrong_types_are_input_errors_naming_the_field(cls, values, field):
    with pytest.raises(InputError, match=field):
        cls.from_dict(values)


@pytest.mark.parametrize("cls,values,match", [
    (SearchNccParams, {"init": "guess"}, "init must be"),
    (SearchNccParams, {"optimizer": "newton"}, "optimizer must be"),
    (SearchNccParams, {"search_feature": "edges"}, "search_feature must be"),
    (SearchNccParams, {"levels_mm": [4.0, 2.0], "iterations": [10]}, "one entry per level"),
    (SearchCrParams, {"optimizer": "lbfgs"}, "needs optimizer 'lm'"),
    (SearchCrParams, {"cr_bins": 2}, "at least 3"),
    (SearchNccParams, {"lm_tries": 0}, "lm_tries must be at least 1"),
    (SearchCrParams, {"lm_min_gain": -1e-5}, "lm_min_gain must be 0 or more"),
    (PaperParams, {"normalisation": "zscore"}, "normalisation must be"),
    (MiParams, {"interpolation": "cubic"}, "interpolation must be"),
])
def test_choices_and_cross_field_rules_are_checked(cls, values, match):
    with pytest.raises(InputError, match=match):
        cls.from_dict(values)


def test_cli_strings_are_coerced_to_the_field_types():
    raw = cli.parse_method_params(["lr0=4", "n_iter=7", "rotations=all", "subset_stride=3.0"])
    p = PaperParams.from_dict(raw)
    assert p.lr0 == 4.0 and isinstance(p.lr0, float)
    assert p.n_iter == 7 and p.subset_stride == 3 and isinstance(p.subset_stride, int)
    assert p.rotations == "all"
    raw = cli.parse_method_params(["consistency=false", "rescue=yes", "levels_mm=[4,2,1]",
                                   "iterations=10,5,2", "max_points=1000,1000,1000", "torch_threads=null"])
    q = SearchCrParams.from_dict(raw)
    assert q.consistency is False and q.rescue is True and q.torch_threads is None
    assert q.levels_mm == (4.0, 2.0, 1.0) and q.iterations == (10, 5, 2) and q.max_points == (1000,) * 3
    # strings that are not JSON reach the coercion as text too
    assert PaperParams.from_dict({"lr0": " 1.5 ", "n_iter": "3"}) == PaperParams(lr0=1.5, n_iter=3)
    assert MiParams.from_dict({"iso_mm": "none", "shrink": "1"}).shrink == (1,)


def test_search_cr_engine_share_and_replace():
    p = SearchCrParams.from_dict({"iterations": [2, 2], "init": "header"})
    engine = p.engine(init="search")
    assert type(engine) is SearchNccParams and engine.similarity == "cr" and engine.iterations == (2, 2)
    assert engine.init == "search" and not hasattr(engine, "consistency")
    moved = engine.replace(initial_transform=np.eye(4).tolist())
    assert isinstance(moved.initial_transform, np.ndarray) and moved.initial_transform.shape == (4, 4)
    with pytest.raises(InputError):
        engine.replace(passes=3)
    with pytest.raises(Exception):          # frozen
        engine.init = "header"


def test_register_takes_a_dict_or_the_methods_own_dataclass(fast_case):
    with pytest.raises(InputError, match="takes PaperParams"):
        register(fast_case.coronal_t2, fast_case.axial_t2, "paper", params=SearchNccParams())
    with pytest.raises(InputError, match="bogus"):
        register(fast_case.coronal_t2, fast_case.axial_t2, "search-ncc", params={"bogus": 1})
    fast = {"search_rot_deg": 0.0, "iterations": [3, 2], "init": "header"}
    by_dict = register(fast_case.coronal_t2, fast_case.axial_t2, "search-ncc", params=fast)
    by_class = register(fast_case.coronal_t2, fast_case.axial_t2, "search-ncc",
                        params=SearchNccParams.from_dict(fast))
    np.testing.assert_array_equal(by_dict.moving_to_fixed, by_class.moving_to_fixed)


def test_device_resolver(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("") == "cpu"
    assert resolve_device("cpu") == "cpu" and resolve_device("CPU") == "cpu"
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(InputError, match="no CUDA device is available"):
            resolve_device(asked)
    for bad in ("gpu", "cuda:x", "mps"):
        with pytest.raises(InputError, match="unknown device"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"


def test_registration_never_falls_back_silently_from_an_explicit_cuda(monkeypatch, fast_case):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for method in ("search-ncc", "search-cr", "paper"):
        with pytest.raises(InputError, match="no CUDA device"):
            register(fast_case.coronal_t2, fast_case.axial_t2, method, device="cuda")


def test_importing_the_package_and_the_mi_method_does_not_import_torch():
    code = ("import sys; import MultimodalRegistrationLib.registration as r; "
            "import MultimodalRegistrationLib.registration.mi; "
            "r.params_for('search-cr', {'passes': '1'}); print('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "MultimodalRegistration") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_unsupported_annotation_is_a_programming_error():
    with pytest.raises(TypeError):
        params_mod._coerce("x", 1, "complex")


def _imports(path, package_parts):
    """(imported module, imported names) of one file, relative imports resolved."""
    import ast
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_registration_package_has_no_import_cycle_and_imports_no_private_name():
    """The engine's modules import each other one way only, and never another module's `_private` name
    (issue 15: register and baselines imported each other; polish used baselines._normalised)."""
    base = ROOT / "MultimodalRegistration"
    files = sorted((base / "MultimodalRegistrationLib" / "registration").glob("*.py")) + \
        [base / "MultimodalRegistrationLab" / "baselines.py", base / "MultimodalRegistrationLib" / "device.py",
         base / "MultimodalRegistrationLib" / "geometry.py"]
    modules = {}
    for path in files:
        parts = list(path.relative_to(base).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, parts[:-1])
    graph = {}
    for name, (path, package_parts) in modules.items():
        graph[name] = set()
        for module, names in _imports(path, package_parts):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private {private} from {module}"
            for target in [module] + [f"{module}.{n}" for n in names]:
                if target in modules and target != name:
                    graph[name].add(target)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(stack + [nxt])
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert {"MultimodalRegistrationLib.registration.search_cr", "MultimodalRegistrationLib.registration.mi",
            "MultimodalRegistrationLib.registration.params"} <= graph["MultimodalRegistrationLib.registration"]


def test_preload_imports_the_method_and_its_lazy_imports_in_a_fresh_process():
    """registration.preload (run_case calls it on a thread while reading the inputs) imports the method's
    module and, for search-cr, the polish's optimiser, which the method would otherwise import while it
    runs (the alias "ours" is search-ncc); an unknown method is an InputError."""
    import subprocess
    import sys

    code = ("import sys; from MultimodalRegistrationLib import registration; before = 'scipy.optimize' in sys.modules; "
            "registration.preload('search-cr'); registration.preload('ours'); "
            "print(before, 'scipy.optimize' in sys.modules, "
            "'MultimodalRegistrationLib.registration.search_cr' in sys.modules, "
            "'MultimodalRegistrationLib.registration.search_ncc' in sys.modules, "
            "'MultimodalRegistrationLib.registration.mi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "True", "False"], out
    from MultimodalRegistrationLib import registration
    from MultimodalRegistrationLib.errors import InputError
    with pytest.raises(InputError):
        registration.preload("mind")
