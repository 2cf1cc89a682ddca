"""What CI can check of the Slicer extension without Slicer.

* CMake: every .py and resource of the module is listed in MultimodalRegistration/CMakeLists.txt
  (and nothing else); the extension CMakeLists.txt has the metadata the Extensions Index needs.
* The module file compiles, imports from the core only names that exist (and only the small
  Slicer-support helper: no in-process registration), and imports with stand-in slicer/qt/vtk.
* The .ui: every ``self.ui.<name>`` exists, every parameter-node field is bound to exactly one widget
  of a fitting class, with the same initial value and (for combo boxes) the same items.
* The panel renders offscreen with PySide6's QUiLoader and stand-in widget classes.
* The command line the module builds is accepted by the core's real argument parser; the stage names
  the core reports are known to the progress bar; requirements cover the core's imports.
* The sample case the module registers in Sample Data has the agreed file names and is consistent.
"""
from __future__ import annotations

import ast
import enum
import importlib.util
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_NAME = "MultimodalRegistration"
MODULE_DIR = ROOT / MODULE_NAME
MODULE_PY = MODULE_DIR / f"{MODULE_NAME}.py"
LIB_DIR = MODULE_DIR / "MultimodalRegistrationLib"
SLICER_LIB_DIR = MODULE_DIR / "MultimodalRegistrationSlicerLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
EXTENSION_CMAKE = ROOT / "CMakeLists.txt"
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"
SAMPLE_DIR = MODULE_DIR / "Resources" / "SampleData"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_stubs

# The sample case's file names are part of the contract with the core: pinned here on purpose.
EXPECTED_SAMPLE_FILES = {
    "coronal": "sample_coronal_ceT1.nii.gz",
    "axial": "sample_axial_T2.nii.gz",
    "coronal_labels": "sample_coronal_labels.nii.gz",
    "axial_labels": "sample_axial_labels.nii.gz",
}
EXPECTED_GROUND_TRUTH = "sample_ground_truth.json"

IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints"}


def _module_source() -> str:
    return MODULE_PY.read_text(encoding="utf-8")


def _module_ast() -> ast.Module:
    return ast.parse(_module_source(), filename=str(MODULE_PY))


# =============================================================================== CMake
def _cmake_set(text: str, variable: str) -> list[str]:
    m = re.search(r"set\(\s*" + re.escape(variable) + r"\b(.*?)\)", text, re.S)
    assert m, f"set({variable} ...) not found"
    body = re.sub(r"#[^\n]*", "", m.group(1))
    return [i.replace("${MODULE_NAME}", MODULE_NAME) for i in body.split()]


def _ignored(rel: Path) -> bool:
    return (any(p in IGNORED_PARTS or p.startswith(".") or p.endswith(".egg-info") for p in rel.parts)
            or rel.suffix in (".pyc", ".pyo"))


def _files_on_disk():
    scripts, resources = set(), set()
    for dirpath, _dirs, files in os.walk(MODULE_DIR):
        for f in files:
            rel = (Path(dirpath) / f).relative_to(MODULE_DIR)
            if _ignored(rel):
                continue
            if rel.parts[0] == "Resources":
                resources.add(rel.as_posix())
            elif rel.suffix == ".py" and rel.parts[0] not in ("Testing", "MultimodalRegistrationLab"):
                scripts.add(rel.as_posix())
    return scripts, resources


def test_lab_package_is_not_shipped():
    """The team's training/simulation/benchmark package stays out of the packaged extension."""
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert (MODULE_DIR / "MultimodalRegistrationLab" / "__init__.py").is_file()
    assert "MultimodalRegistrationLab" not in text


def test_module_cmake_lists_every_script_and_resource():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    listed_scripts = _cmake_set(text, "MODULE_PYTHON_SCRIPTS")
    listed_resources = _cmake_set(text, "MODULE_PYTHON_RESOURCES")
    scripts, resources = _files_on_disk()
    assert f"{MODULE_NAME}.py" in scripts and "Resources/UI/MultimodalRegistration.ui" in resources
    hint = " (run: python tools/sync_cmake_lists.py)"
    assert sorted(scripts - set(listed_scripts)) == [], "on disk, not in MODULE_PYTHON_SCRIPTS" + hint
    assert sorted(set(listed_scripts) - scripts) == [], "in MODULE_PYTHON_SCRIPTS, not on disk" + hint
    assert sorted(resources - set(listed_resources)) == [], "on disk, not in MODULE_PYTHON_RESOURCES" + hint
    assert sorted(set(listed_resources) - resources) == [], "in MODULE_PYTHON_RESOURCES, not on disk" + hint
    for listed in (listed_scripts, listed_resources):
        assert len(listed) == len(set(listed)), "an item is listed twice"


def test_module_cmake_builds_a_scripted_module_with_tests():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"set\(\s*MODULE_NAME\s+" + MODULE_NAME + r"\s*\)", text)
    macro = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert macro, "slicerMacroBuildScriptedModule(...) missing"
    args = macro.group(1).split()
    for expected in ("NAME", "${MODULE_NAME}", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}",
                     "RESOURCES", "${MODULE_PYTHON_RESOURCES}", "WITH_GENERIC_TESTS"):
        assert expected in args
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert "add_subdirectory(Testing)" in text and (MODULE_DIR / "Testing" / "CMakeLists.txt").is_file()


def _cmake_variables(text: str) -> dict:
    values = {}
    for m in re.finditer(r'set\(\s*(\w+)\s+"((?:[^"\\]|\\.)*)"\s*\)', text):
        value = m.group(2)
        for _ in range(5):  # expand ${VAR} of earlier set()s
            value = re.sub(r"\$\{(\w+)\}", lambda v: values.get(v.group(1), v.group(0)), value)
        values[m.group(1)] = value
    return values


def test_extension_cmake_has_index_metadata():
    text = EXTENSION_CMAKE.read_text(encoding="utf-8")
    for statement in (r"project\(\s*" + MODULE_NAME + r"\s*\)", r"find_package\(\s*Slicer\s+REQUIRED\s*\)",
                      r"include\(\s*\$\{Slicer_USE_FILE\}\s*\)", r"add_subdirectory\(\s*" + MODULE_NAME + r"\s*\)",
                      r"include\(\s*\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\s*\)",
                      r"include\(\s*\$\{Slicer_EXTENSION_CPACK\}\s*\)"):
        assert re.search(statement, text), statement
    v = _cmake_variables(text)
    for field in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert v.get(f"EXTENSION_{field}", "").strip(), f"EXTENSION_{field} missing or empty"
    assert re.match(r"https://\S+$", v["EXTENSION_HOMEPAGE"])
    assert len(v["EXTENSION_DESCRIPTION"]) > 40
    deps = v["EXTENSION_DEPENDS"].split()
    assert deps == ["NA"] or "NA" not in deps
    # icon and screenshots: URLs to files of this repository that exist
    raw = v.get("EXTENSION_RAW_URL", "")
    urls = [v["EXTENSION_ICONURL"]] + v["EXTENSION_SCREENSHOTURLS"].split()
    for url in urls:
        assert re.match(r"https://\S+\.(png|jpg|jpeg|gif)$", url), url
        assert raw and url.startswith(raw + "/"), f"{url} is not under EXTENSION_RAW_URL"
        assert (ROOT / url[len(raw) + 1:]).is_file(), f"{url} points to a file missing from the repository"


def _png_size(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_icons_are_128px_pngs():
    assert _png_size(MODULE_DIR / "Resources" / "Icons" / f"{MODULE_NAME}.png") == (128, 128)
    assert _png_size(ROOT / "Resources" / "Icons" / f"{MODULE_NAME}.png") == (128, 128)


# =============================================================================== module source
def test_module_compiles():
    compile(_module_source(), str(MODULE_PY), "exec")


def _top_level_names(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    body = list(tree.body)
    for node in tree.body:  # `try: from x import a / except ImportError: def a(...)` defines a
        if isinstance(node, ast.Try):
            body += node.body + [n for h in node.handlers for n in h.body]
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.add((a.asname or a.name).split(".")[0])
    return names


def _package_imports(tree, package: str) -> list:
    """(submodule, name or None) for every import of ``package`` in a parsed file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
            sub = node.module.split(".", 1)[1] if "." in node.module else ""
            found += [(sub, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".", 1)[1] if "." in a.name else "", None)
                      for a in node.names if a.name.split(".")[0] == package]
    return found


def _core_imports(tree) -> list:
    """(submodule, name or None) for every import of MultimodalRegistrationLib in a parsed file."""
    return _package_imports(tree, "MultimodalRegistrationLib")


def _slicer_lib_files() -> list:
    return sorted(SLICER_LIB_DIR.glob("*.py"))


def _defined(package_dir: Path, sub: str, name) -> None:
    path = package_dir / (sub.replace(".", "/") + ".py") if sub else package_dir / "__init__.py"
    if name is not None and not sub and (package_dir / f"{name}.py").is_file():
        return  # `from package import submodule`
    assert path.is_file(), f"{package_dir.name}.{sub} does not exist"
    if name is not None:
        assert name in _top_level_names(path), f"{name} is not defined in {package_dir.name}.{sub}"


def test_module_imports_only_existing_names():
    tree = _module_ast()
    imports = _core_imports(tree) + _package_imports(tree, "MultimodalRegistrationSlicerLib")
    assert imports, "the module should use the contract and the Slicer-side helpers"
    for path in [MODULE_PY] + _slicer_lib_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for sub, name in _core_imports(tree):
            _defined(LIB_DIR, sub, name)
        for sub, name in _package_imports(tree, "MultimodalRegistrationSlicerLib"):
            _defined(SLICER_LIB_DIR, sub, name)
        for node in ast.walk(tree):  # relative imports inside the Slicer-side package
            if path != MODULE_PY and isinstance(node, ast.ImportFrom) and node.level == 1:
                for a in node.names:
                    _defined(SLICER_LIB_DIR, node.module or "", a.name)


def test_module_does_not_register_in_process():
    """From the core, the module and its Slicer-side package import only the contract (standard
    library) and, for the self-test's TRE/Dice, ``metrics`` (numpy and geometry; inside functions only,
    see test_contract_and_slicer_free_helpers_need_only_the_standard_library); the core runs as
    `PythonSlicer -m ...cli`."""
    for path in [MODULE_PY] + _slicer_lib_files():
        subs = {sub for sub, _ in _core_imports(ast.parse(path.read_text(encoding="utf-8")))}
        assert subs <= {"contract", "metrics"}, f"{path.name} imports core modules {subs - {'contract', 'metrics'}}"
    metrics_imports = set()
    for node in ast.parse((LIB_DIR / "metrics.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            metrics_imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            metrics_imports.add("." * node.level + (node.module or ".".join(a.name for a in node.names)))
    assert metrics_imports <= set(sys.stdlib_module_names) | {"numpy", ".geometry", "__future__"}, \
        f"metrics.py (run in Slicer's process by the self-test) imports {sorted(metrics_imports)}"
    from MultimodalRegistrationSlicerLib import command

    assert command.CLI_MODULE == "MultimodalRegistrationLib.cli"
    assert (LIB_DIR / "cli.py").is_file(), "the core CLI the module runs is missing"


def test_the_core_never_imports_slicer():
    """MultimodalRegistrationLib runs outside Slicer (CLI, batch, PythonSlicer child): no file of it imports
    slicer, vtk, qt, ctk or the Slicer-side helper package, at any level (inside functions too)."""
    forbidden = {"slicer", "vtk", "qt", "ctk", "MultimodalRegistrationSlicerLib", "SampleData", "PyTorchUtils"}
    for path in sorted(LIB_DIR.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        assert not found & forbidden, f"{path.name} imports {sorted(found & forbidden)}"


def test_contract_and_slicer_free_helpers_need_only_the_standard_library():
    """contract.py and the Slicer-free half of MultimodalRegistrationSlicerLib import nothing outside the
    standard library at module level (numpy only inside functions): the module imports them before the
    core's dependencies are installed. The Slicer-side files are the only ones that import slicer."""
    stdlib = set(sys.stdlib_module_names)
    slicer_side = {"scene.py", "dependencies.py", "sampledata.py", "i18n.py"}
    for path in [LIB_DIR / "contract.py"] + _slicer_lib_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top.add(node.module.split(".")[0])
            elif isinstance(node, ast.Try):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and sub.module:
                        top.add(sub.module.split(".")[0])
        allowed = stdlib | {"MultimodalRegistrationLib"}
        core_top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("MultimodalRegistrationLib")}
        assert core_top <= {"MultimodalRegistrationLib.contract"}, f"{path.name} imports {sorted(core_top)} at module level"
        if path.name in slicer_side:
            allowed |= {"slicer", "vtk"}
        else:
            assert not top & {"slicer", "vtk", "qt", "ctk"}, f"{path.name} imports Slicer"
        assert top <= allowed, f"{path.name} imports {sorted(top - allowed)} at module level"
    assert _core_imports(ast.parse((LIB_DIR / "contract.py").read_text(encoding="utf-8"))) == []


def test_module_follows_slicer_conventions():
    src = _module_source()
    tree = _module_ast()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in c.bases] for name, c in classes.items()}
    assert "ScriptedLoadableModule" in bases[MODULE_NAME]
    assert bases[f"{MODULE_NAME}Widget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert "ScriptedLoadableModuleLogic" in bases[f"{MODULE_NAME}Logic"]
    assert "ScriptedLoadableModuleTest" in bases[f"{MODULE_NAME}Test"]
    decorated = [c.name for c in classes.values()
                 if any(ast.unparse(d) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert decorated == [f"{MODULE_NAME}ParameterNode"]
    apply_src = ast.get_source_segment(src, next(f for f in classes[f"{MODULE_NAME}Widget"].body
                                                 if isinstance(f, ast.FunctionDef) and f.name == "onApplyButton"))
    assert "slicer.util.tryWithErrorDisplay" in apply_src
    # the Logic stays free of GUI calls (dialogs belong to the widget)
    logic_src = ast.get_source_segment(src, classes[f"{MODULE_NAME}Logic"])
    for gui in ("errorDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay", "self.ui", "qt.QMessageBox",
                "pip_install", "pip_ensure"):
        assert gui not in logic_src, f"{gui} used in the Logic"
    assert "runTest" in ast.get_source_segment(src, classes[f"{MODULE_NAME}Test"])


# =============================================================================== .ui and parameter node
def _ui_widgets():
    """name -> (class, {property name: element}) for every widget in the .ui."""
    tree = ET.parse(UI_FILE)
    widgets = {}
    for w in tree.iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        widgets[w.get("name")] = (w.get("class"), props, w)
    return widgets


def _param_fields():
    """field -> (annotation source, default source or None) of the parameter node class."""
    cls = next(n for n in _module_ast().body if isinstance(n, ast.ClassDef) and n.name == f"{MODULE_NAME}ParameterNode")
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            fields[stmt.target.id] = (ast.unparse(stmt.annotation),
                                      ast.unparse(stmt.value) if stmt.value is not None else None)
    return fields


def test_ui_widget_names_are_unique():
    names = [w.get("name") for w in ET.parse(UI_FILE).iter("widget")]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_every_ui_name_the_module_uses_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", _module_source()))
    assert used, "the module uses no self.ui names?"
    missing = sorted(used - set(_ui_widgets()))
    assert missing == [], f"self.ui names missing from the .ui: {missing}"


def _bindings():
    out = {}
    for name, (cls, props, _w) in _ui_widgets().items():
        if "SlicerParameterName" in props:
            out.setdefault(props["SlicerParameterName"].findtext("string"), []).append((name, cls, props, _w))
    return out


def test_every_parameter_is_bound_to_exactly_one_widget():
    fields, bindings = _param_fields(), _bindings()
    assert fields, "no parameter node fields found"
    assert sorted(set(fields) - set(bindings)) == [], "parameter node fields without a widget"
    assert sorted(set(bindings) - set(fields)) == [], "SlicerParameterName values that are not fields"
    assert {k: len(v) for k, v in bindings.items() if len(v) != 1} == {}, "a field is bound to several widgets"


def _node_classes(annotation: str) -> list:
    return [c for c in re.findall(r"vtkMRML\w+", annotation)]


#: Widget classes that Slicer 5.6's parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/
#: guiConnectors.py) connects to each parameter type. Its connectors match the widget's class exactly
#: (``type(widget) == qt.QCheckBox``, ``type(widget) in (qt.QSlider, qt.QSpinBox)``), so a subclass such
#: as ctkCheckBox or ctkDoubleSpinBox does not bind (those connectors came in Slicer 5.8). A QSlider
#: (int) or ctkSliderWidget (float) needs a WithinRange (or Minimum and Maximum) annotation, or
#: connectGui raises. qMRMLSliderWidget is left out because the float connector of the source
#: checked lists only QDoubleSpinBox and ctkSliderWidget.
SLICER_5_6_CONNECTORS = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "enum": {"QComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
}
NEEDS_BOUNDS = {"QSlider", "ctkSliderWidget"}


def test_the_connector_rules_are_those_of_the_oldest_slicer_promised():
    """The rules above model Slicer 5.6; the docs must promise no older Slicer than that."""
    for doc in (ROOT / "docs" / "SLICER.md", ROOT / "README.md"):
        promised = re.findall(r"needs 3D Slicer\s+(\d+\.\d+) or newer", doc.read_text(encoding="utf-8"))
        assert promised == ["5.6"], f"{doc.name} promises Slicer {promised}; check the connector rules for it"


def _param_kind(annotation: str):
    from MultimodalRegistrationSlicerLib import command

    base = re.sub(r"Annotated\[(\w+),.*\]$", r"\1", annotation)
    if "vtkMRML" in annotation:
        return "node", base
    candidate = getattr(command, base, None)
    if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
        return "enum", base
    if base in ("Path", "pathlib.Path"):
        return "path", base
    return base, base


def test_bound_widgets_bind_on_slicer_5_6_with_the_defaults_shown():
    from MultimodalRegistrationSlicerLib import command

    fields, bindings = _param_fields(), _bindings()
    for field, (annotation, default) in fields.items():
        (name, cls, props, element), = bindings[field]
        kind, base = _param_kind(annotation)
        assert kind in SLICER_5_6_CONNECTORS, f"no Slicer 5.6 connector for parameter {field}: {annotation}"
        assert cls in SLICER_5_6_CONNECTORS[kind], \
            f"{field} ({kind}) is bound to a {cls}; Slicer 5.6 binds only {sorted(SLICER_5_6_CONNECTORS[kind])}"
        bounded = re.search(r"WithinRange\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)", annotation)
        if cls in NEEDS_BOUNDS:
            assert bounded, f"{field}: a {cls} binds only to a bounded parameter (WithinRange)"
        if kind == "node":
            types_ = [s.text for s in props["nodeTypes"].iter("string")]
            assert types_ == _node_classes(annotation), f"{field}: nodeTypes {types_} != {annotation}"
            none_enabled = props.get("noneEnabled") is not None and props["noneEnabled"].findtext("bool") == "true"
            assert none_enabled == ("None" in annotation), f"{field}: noneEnabled must match Optional"
        elif kind == "enum":
            enum_cls = getattr(command, base)
            items = [i.find("property").findtext("string") for i in element.findall("item")]
            assert items == [m.label() for m in enum_cls], f"{field}: combo items differ from {base} labels"
            if default:
                member = default.split(".")[-1]
                current = int(props["currentIndex"].findtext("number")) if "currentIndex" in props else 0
                assert list(enum_cls.__members__).index(member) == current, f"{field}: default not selected"
        elif kind == "bool":
            checked = props.get("checked") is not None and props["checked"].findtext("bool") == "true"
            assert checked == (default == "True"), f"{field}: .ui checked state differs from the default"
        elif kind == "int":
            value = int(props["value"].findtext("number")) if "value" in props else 0
            assert value == int(default or 0), field
            if bounded:  # the connector sets the range from the annotation; the .ui shows the same
                lo = int(props["minimum"].findtext("number")) if "minimum" in props else 0
                hi = int(props["maximum"].findtext("number")) if "maximum" in props else 99
                assert (lo, hi) == (int(bounded.group(1)), int(bounded.group(2))), f"{field}: .ui range"
                assert lo <= int(default or 0) <= hi, f"{field}: default outside its range"
        elif kind == "str":
            text = props["text"].findtext("string") if "text" in props else ""
            assert (text or "") == ast.literal_eval(default or "''"), field


def test_the_binding_check_refuses_what_slicer_5_6_refuses():
    """The rule table itself: the widgets the issue found accepted before must not pass."""
    assert "ctkCheckBox" not in SLICER_5_6_CONNECTORS["bool"]
    assert "ctkDoubleSpinBox" not in SLICER_5_6_CONNECTORS["float"]
    assert "QSlider" in NEEDS_BOUNDS and "QSpinBox" not in NEEDS_BOUNDS


def test_node_selectors_get_the_scene():
    connections = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                   for c in ET.parse(UI_FILE).iter("connection")}
    for name, (cls, _p, _w) in _ui_widgets().items():
        if cls.startswith("qMRML") and cls != "qMRMLWidget":
            assert (MODULE_NAME, "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in connections, name


def test_advanced_section_is_collapsed_and_holds_the_method():
    widgets = _ui_widgets()
    cls, props, element = widgets["advancedCollapsibleButton"]
    assert cls == "ctkCollapsibleButton"
    assert props["collapsed"].findtext("bool") == "true"
    inside = {w.get("name") for w in element.iter("widget")}
    assert {"methodComboBox", "methodParametersLineEdit", "translatorComboBox", "deviceComboBox"} <= inside


# =============================================================================== import with stand-ins
@pytest.fixture()
def fake_slicer(monkeypatch):
    from fake_slicer import install

    return install(monkeypatch)


def test_module_imports_with_stand_in_slicer(fake_slicer):
    from fake_slicer import load_module

    module = load_module()
    for cls in ("", "Widget", "Logic", "Test", "ParameterNode"):
        assert hasattr(module, MODULE_NAME + cls)
    # the parameter node's choices are the helper's enums, with the contract's CLI values
    annotations = getattr(module, f"{MODULE_NAME}ParameterNode").__annotations__
    assert annotations["method"] is module.Method and annotations["device"] is module.Device
    paths, truth = module.sampleDataPaths()
    assert {k: Path(v).name for k, v in paths.items()} == EXPECTED_SAMPLE_FILES
    assert Path(truth).name == EXPECTED_GROUND_TRUTH
    assert Path(paths["coronal"]).parent == SAMPLE_DIR
    assert module.MultimodalRegistrationLogic.inputProblem(None, None)
    # moving->fixed rows go into the vtk matrix unchanged (no inversion, no LPS flip)
    rows = [[0.0, -1.0, 0.0, 5.0], [1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 1.0, 7.5], [0.0, 0.0, 0.0, 1.0]]
    logic = module.MultimodalRegistrationLogic
    assert logic.rowsFromVtkMatrix(logic.vtkMatrixFromRows(rows)) == rows


# =============================================================================== rendering
def test_panel_renders_offscreen(tmp_path):
    import slicer_stubs as stubs  # PySide6 (the test extra): a missing one fails here

    panel = stubs.load_ui(UI_FILE)
    # the ctk/qMRML names resolved to the stand-ins, not to a bare QWidget
    for name, (cls, _p, _w) in _ui_widgets().items():
        if cls in stubs.STUB_CLASS_NAMES:
            assert type(stubs.child(panel, name)).__name__ == cls, name
    advanced = stubs.child(panel, "advancedCollapsibleButton")
    inputs = stubs.child(panel, "inputsCollapsibleButton")
    image = stubs.render(panel, tmp_path / "panel.png", width=420)
    assert (tmp_path / "panel.png").stat().st_size > 1000
    assert 420 <= image.width() <= 640 and image.height() > 250
    assert advanced.collapsed and not inputs.collapsed
    assert not stubs.child(panel, "methodComboBox").isVisible()
    assert stubs.child(panel, "coronalVolumeSelector").isVisible()
    assert advanced.height() < inputs.height() / 2
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 10, "the picture is blank"


def test_readme_screenshots_exist():
    panel = ROOT / "Resources" / "Screenshots" / "panel.png"
    assert panel.is_file(), "run: python tools/render_panel.py"
    width, height = _png_size(panel)
    assert width >= 300 and height >= 250
    # every picture the Slicer section of the README shows is in the repository
    doc = (ROOT / "docs" / "SLICER.md").read_text(encoding="utf-8")
    pictures = re.findall(r'<img src="([^"]+)"', doc) + re.findall(r"!\[[^\]]*\]\(([^)\s]+)", doc)
    assert "Resources/Screenshots/panel.png" in pictures and "Resources/Screenshots/results.png" in pictures
    for picture in pictures:
        assert (ROOT / picture).is_file(), f"docs/SLICER.md shows {picture}, which is missing"
        _png_size(ROOT / picture)


# =============================================================================== contract with the core
def _cli_parser():
    from MultimodalRegistrationLib import cli

    return cli.build_parser()


@pytest.mark.parametrize("options", [
    {},
    dict(coronal_labels="cl.nii.gz", axial_labels="al.nii.gz", method="paper", translator="none",
         device="cpu", seed=5, label_mode="nearest", method_params="lr0=4 iterations=30", debug=True),
    dict(method="mi", translator="file", translator_file="/m/x.safetensors", device="cuda"),
    dict(init="center"),
])
def test_core_cli_accepts_the_module_command(options):
    from MultimodalRegistrationSlicerLib.command import build_register_command

    parser = _cli_parser()
    cmd = build_register_command("PythonSlicer", "/t/c.nii.gz", "/t/a.nii.gz", "/t/out", **options)
    assert cmd[1:3] == ["-m", "MultimodalRegistrationLib.cli"]
    args = parser.parse_args(cmd[3:])
    assert args.command == "register"
    assert (args.coronal, args.axial, args.out) == ("/t/c.nii.gz", "/t/a.nii.gz", "/t/out")
    assert args.progress == "json"
    assert args.method == options.get("method", "search-cr")
    assert args.device == options.get("device", "auto")
    assert args.coronal_labels == options.get("coronal_labels")
    assert args.axial_labels == options.get("axial_labels")
    expected_translator = options.get("translator_file") or options.get("translator", "default")
    assert args.translator == expected_translator
    if "seed" in options:
        assert args.seed == options["seed"]
    if "label_mode" in options:
        assert args.label_mode == options["label_mode"]
    assert getattr(args, "param", []) == (options["method_params"].split() if "method_params" in options else [])
    assert bool(getattr(args, "debug", False)) == bool(options.get("debug"))
    assert args.init == options.get("init")


def test_core_progress_stages_are_known_to_the_progress_bar():
    from MultimodalRegistrationLib.contract import PROGRESS_STAGES
    from MultimodalRegistrationSlicerLib.process import STAGE_TEXT, STAGE_WEIGHTS

    assert tuple(name for name, _ in STAGE_WEIGHTS) == PROGRESS_STAGES and set(STAGE_TEXT) == set(PROGRESS_STAGES)
    known = set(PROGRESS_STAGES)
    stages = {}
    for path in [*LIB_DIR.glob("*.py"), *LIB_DIR.glob("registration/*.py")]:
        if path.stem in ("train", "batch", "progress", "evaluate", "evaluate_gan"):
            continue  # not on the path of `mmreg register`
        for stage in re.findall(r"report\(\s*progress\s*,\s*\"(\w+)\"", path.read_text(encoding="utf-8")):
            stages.setdefault(stage, set()).add(path.name)
    assert {"load", "register", "write"} <= set(stages), f"the core reports only {sorted(stages)}"
    unknown = {s: sorted(files) for s, files in stages.items() if s not in known}
    assert unknown == {}, "stages missing from contract.PROGRESS_STAGES (and the progress bar)"


def _third_party_imports() -> set:
    names = set()
    local = {p.stem for p in LIB_DIR.rglob("*.py")} | {p.name for p in LIB_DIR.iterdir() if p.is_dir()}
    for path in LIB_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names)
    return {n for n in names if n not in stdlib and n not in local and n != "MultimodalRegistrationLib"}


def test_requirements_are_pinned_and_cover_the_core_imports():
    from MultimodalRegistrationSlicerLib.requirements import read_requirements

    reqs = read_requirements(REQUIREMENTS)
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower(): r for r in reqs}
    assert "torch" not in names, "torch comes from the PyTorch extension, not from requirements.txt"
    for pinned in ("nibabel", "safetensors"):
        assert pinned in names and "==" in names[pinned], f"{pinned} must be pinned with =="
    for bundled in ("simpleitk", "numpy"):
        assert bundled in names and "==" not in names[bundled], f"{bundled} is bundled with Slicer: no == pin"
    import_to_dist = {"SimpleITK": "simpleitk", "PIL": "matplotlib", "skimage": "scikit-image", "yaml": "pyyaml"}
    provided_elsewhere = {"torch", "PyTorchUtils", "slicer", "vtk", "qt", "ctk", "psutil", "pytest", "hypothesis",
                          "PySide6", "elastix", "itk", "ants", "packaging",
                          "dask", "distributed"}  # only `mmreg batch --executor dask` (the `cluster` extra)
    uncovered = sorted(n for n in _third_party_imports()
                       if n not in provided_elsewhere and import_to_dist.get(n, n).lower() not in names)
    assert uncovered == [], f"core imports not covered by {REQUIREMENTS.name}: {uncovered}"


# =============================================================================== sample data
def test_sample_case_files():
    from MultimodalRegistrationLib import contract, sample

    assert contract.SAMPLE_VOLUME_FILES == EXPECTED_SAMPLE_FILES
    assert contract.SAMPLE_GROUND_TRUTH == EXPECTED_GROUND_TRUTH
    assert contract.SAMPLE_FILES == {**EXPECTED_SAMPLE_FILES, "truth": EXPECTED_GROUND_TRUTH}
    assert sample.SAMPLE_DIR == SAMPLE_DIR.resolve()
    paths = {k: SAMPLE_DIR / v for k, v in EXPECTED_SAMPLE_FILES.items()}
    missing = [p.name for p in list(paths.values()) + [SAMPLE_DIR / EXPECTED_GROUND_TRUTH] if not p.is_file()]
    assert missing == [], f"the bundled sample case is incomplete (missing {missing})"
    import nibabel as nib
    import numpy as np

    imgs = {k: nib.load(str(p)) for k, p in paths.items()}
    for k, img in imgs.items():
        assert len(img.shape) == 3, f"{k} is not 3D"
    assert imgs["coronal_labels"].shape == imgs["coronal"].shape
    assert imgs["axial_labels"].shape == imgs["axial"].shape
    for k in ("coronal_labels", "axial_labels"):
        data = np.asarray(imgs[k].dataobj)
        assert np.all(data == np.round(data)) and data.max() > 0, f"{k} must hold integer labels"
    truth = json.loads((SAMPLE_DIR / EXPECTED_GROUND_TRUTH).read_text())
    matrix = contract.check_matrix4x4(truth[contract.SAMPLE_GROUND_TRUTH_KEY])
    rotation = np.asarray(matrix)[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4), "ground truth is not rigid"
    # the stacks are what the module expects: coronal slice normal ~A, axial ~S
    for k, axis in (("coronal", 1), ("axial", 2)):
        affine = imgs[k].affine[:3, :3]
        slice_axis = int(np.argmax(np.linalg.norm(affine, axis=0)))  # thick-slice axis
        assert int(np.argmax(np.abs(affine[:, slice_axis]))) == axis, f"{k} stack orientation"


# =============================================================================== tools/sync_cmake_lists.py
def test_sync_tool_rewrites_the_lists_from_disk(tmp_path):
    """The tool the lead runs to keep the lists in sync: new files are added, removed ones dropped,
    the rest of the CMakeLists.txt is kept, and the result passes its own check."""
    spec = importlib.util.spec_from_file_location("_sync_cmake_lists", ROOT / "tools" / "sync_cmake_lists.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    module = tmp_path / MODULE_NAME
    for rel in (f"{MODULE_NAME}.py", "MultimodalRegistrationLib/__init__.py", "MultimodalRegistrationLib/new_core.py",
                "Resources/UI/x.ui", "Resources/Models/net.safetensors", "Testing/Python/helper.py",
                "MultimodalRegistrationLib/__pycache__/a.cpython-311.pyc", "Resources/.DS_Store"):
        (module / rel).parent.mkdir(parents=True, exist_ok=True)
        (module / rel).write_text("x")
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    scripts, resources = tool.scripts_on_disk(module), tool.resources_on_disk(module)
    assert scripts == [f"{MODULE_NAME}.py", "MultimodalRegistrationLib/__init__.py",
                       "MultimodalRegistrationLib/new_core.py"]
    assert resources == ["Resources/Models/net.safetensors", "Resources/UI/x.ui"]
    assert tool.differences(text, module), "the real lists cannot match this toy module"
    new = tool.rewrite(text, scripts, resources)
    assert tool.differences(new, module) == []
    assert "${MODULE_NAME}.py" in new and "slicerMacroBuildScriptedModule" in new
    assert _cmake_set(new, "MODULE_PYTHON_SCRIPTS") == scripts
    assert tool.rewrite(new, scripts, resources) == new  # idempotent
