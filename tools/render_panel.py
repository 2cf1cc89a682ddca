#!/usr/bin/env python3
"""Render the module panel (Resources/UI/MultimodalRegistration.ui) offscreen, without Slicer.

    python tools/render_panel.py                       # panel as a user first sees it
    python tools/render_panel.py --result mmreg_demo   # also the panel after a real run, and its report

Writes ``Resources/Screenshots/panel.png`` (Advanced collapsed, as in Slicer),
``Resources/Screenshots/panel_advanced.png`` (Advanced expanded) and
``Resources/Screenshots/panel_running.png`` (during a run: Cancel, progress, status line). With
``--result DIR`` (an output folder of ``mmreg register``/``mmreg demo``) it also writes
``panel_done.png``, whose Results section shows that run's metrics and status lines computed from its
``transform.json`` exactly as the module does, and copies ``DIR/report.png`` to
``Resources/Screenshots/results.png`` for the README and the Extensions Index.

The CTK/qMRML classes are replaced by the stand-ins of ``Testing/slicer/slicer_stubs.py``; node selectors
show the names the bundled sample case gets in the scene. The pictures are therefore PySide6 renders
with stand-in widgets, not captures of 3D Slicer, and must be captioned so wherever they are shown
(docs/SLICER.md, README.md, the screenshot list in CMakeLists.txt). ``results.png`` is the core's own
``report.png`` (matplotlib), not a Slicer capture either.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "slicer"))
sys.path.insert(0, str(ROOT / "MultimodalRegistration"))

UI_FILE = ROOT / "MultimodalRegistration" / "Resources" / "UI" / "MultimodalRegistration.ui"
SCREENSHOTS = ROOT / "Resources" / "Screenshots"

#: What the node selectors show (the node names of the bundled sample case).
DEMO_NODES = {
    "coronalVolumeSelector": "sample_coronal_ceT1",
    "axialVolumeSelector": "sample_axial_T2",
    "coronalLabelsSelector": "sample_coronal_labels",
    "axialLabelsSelector": "sample_axial_labels",
}


def _quiet_qt_messages():
    """Hide the loader's harmless notes about Slicer-only signals and enum sets."""
    from PySide6 import QtCore

    def handler(mode, context, message):
        if "mrmlSceneChanged" in message or "could not be read" in message or "propagateSizeHints" in message \
                or "QObject::connect" in message:
            return
        sys.stderr.write(message + "\n")

    QtCore.qInstallMessageHandler(handler)


def build_panel(result_dir: Path | None = None, running: bool = False):
    """Load the .ui with stand-ins and put it in the state to picture."""
    import slicer_stubs as stubs
    from MultimodalRegistrationLib.contract import OUTPUT_FILES, read_transform_json
    from MultimodalRegistrationSlicerLib.results import completion_status, format_metrics

    _quiet_qt_messages()
    panel = stubs.load_ui(UI_FILE)
    for name, node_name in DEMO_NODES.items():
        stubs.child(panel, name).setDemoNodeName(node_name)
    stubs.child(panel, "translatorFilePathLineEdit").setEnabled(False)  # enabled only for "checkpoint file"
    apply_button = stubs.child(panel, "applyButton")
    apply_button.setEnabled(True)
    apply_button.setToolTip("Register the coronal ceT1 to the axial T2 and transfer the labels.")
    if running:
        # what the widget shows while the core runs: Cancel, progress from the JSON lines, inputs locked
        from MultimodalRegistrationSlicerLib.process import ProgressEvent, ProgressTracker

        tracker = ProgressTracker()
        for event in (ProgressEvent("load", 1, 1), ProgressEvent("translate", 1, 1), ProgressEvent("register", 12, 37)):
            tracker.update(event)
        apply_button.setText("Cancel")
        apply_button.setToolTip("Stop the registration; the scene is left as it was.")
        stubs.child(panel, "progressBar").setValue(tracker.percent)
        stubs.child(panel, "statusLabel").setText(tracker.status)
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton"):
            stubs.child(panel, name).setEnabled(False)
    if result_dir is not None:
        result = read_transform_json(result_dir / OUTPUT_FILES["transform_json"])
        stubs.child(panel, "progressBar").setValue(100)
        stubs.child(panel, "statusLabel").setText(completion_status(result, float(result.get("seconds") or 0.0)))
        stubs.child(panel, "metricsLabel").setText(format_metrics(result))
        stubs.child(panel, "outputFolderLabel").setText(str(result_dir.resolve()))
        stubs.child(panel, "showReportButton").setEnabled((result_dir / OUTPUT_FILES["report_png"]).is_file())
        stubs.child(panel, "openOutputFolderButton").setEnabled(True)
    return panel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SCREENSHOTS / "panel.png")
    parser.add_argument("--advanced-out", type=lambda s: Path(s) if s else None,
                        default=SCREENSHOTS / "panel_advanced.png", help="empty: skip this picture")
    parser.add_argument("--result", type=Path, help="an mmreg output folder to show in the Results section")
    parser.add_argument("--running-out", type=lambda s: Path(s) if s else None,
                        default=SCREENSHOTS / "panel_running.png",
                        help="the panel while a run is in progress (empty: skip)")
    parser.add_argument("--done-out", type=Path, default=SCREENSHOTS / "panel_done.png",
                        help="the panel after --result's run")
    parser.add_argument("--results-out", type=Path, default=SCREENSHOTS / "results.png",
                        help="where --result's report.png is copied")
    parser.add_argument("--width", type=int, default=420)
    args = parser.parse_args(argv)

    import slicer_stubs as stubs

    stubs.application()
    panel = build_panel()
    stubs.render(panel, args.out, width=args.width)
    print(f"wrote {args.out}")

    if args.advanced_out:
        panel_adv = build_panel()
        stubs.child(panel_adv, "advancedCollapsibleButton").setCollapsed(False)
        stubs.render(panel_adv, args.advanced_out, width=args.width)
        print(f"wrote {args.advanced_out}")

    if args.running_out:
        stubs.render(build_panel(running=True), args.running_out, width=args.width)
        print(f"wrote {args.running_out}")

    if args.result is not None:
        stubs.render(build_panel(args.result), args.done_out, width=args.width)
        print(f"wrote {args.done_out}")
        report = args.result / "report.png"
        if report.is_file():
            target = args.results_out
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report, target)
            print(f"copied {report} -> {target}")
        else:
            print(f"no report.png in {args.result}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
