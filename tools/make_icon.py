#!/usr/bin/env python3
"""Draw the 128x128 module/extension icon (two perpendicular MRI stacks and an arrow).

    python tools/make_icon.py

writes MultimodalRegistration/Resources/Icons/MultimodalRegistration.png (module icon, also the
Sample Data thumbnail) and Resources/Icons/MultimodalRegistration.png (extension icon for the
Extensions Index). Needs PySide6; runs offscreen.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (
    ROOT / "MultimodalRegistration" / "Resources" / "Icons" / "MultimodalRegistration.png",
    ROOT / "Resources" / "Icons" / "MultimodalRegistration.png",
)
SIZE = 128


def draw(size: int = SIZE) -> QtGui.QImage:
    image = QtGui.QImage(size, size, QtGui.QImage.Format_ARGB32)
    image.fill(QtCore.Qt.transparent)
    p = QtGui.QPainter(image)
    p.setRenderHint(QtGui.QPainter.Antialiasing)
    s = size / 128.0
    p.scale(s, s)

    # rounded dark tile
    p.setPen(QtCore.Qt.NoPen)
    p.setBrush(QtGui.QColor(32, 40, 56))
    p.drawRoundedRect(QtCore.QRectF(2, 2, 124, 124), 18, 18)

    def slab(points, color, alpha):
        c = QtGui.QColor(color)
        c.setAlpha(alpha)
        p.setBrush(c)
        p.setPen(QtGui.QPen(QtGui.QColor(color).lighter(140), 2))
        p.drawPolygon(QtGui.QPolygonF([QtCore.QPointF(x, y) for x, y in points]))

    # axial stack: horizontal parallelograms (T2, blue)
    for dy in (0, 10, 20):
        slab([(16, 74 + dy), (76, 74 + dy), (104, 56 + dy), (44, 56 + dy)], "#3b82f6", 150)
    # coronal stack: upright slabs (ceT1, orange), drawn on top
    for dx in (0, 9, 18):
        slab([(30 + dx, 20), (30 + dx, 86), (44 + dx, 78), (44 + dx, 12)], "#f59e0b", 170)

    # arrow coronal -> axial
    pen = QtGui.QPen(QtGui.QColor("#e5e7eb"), 5, QtCore.Qt.SolidLine, QtCore.Qt.RoundCap, QtCore.Qt.RoundJoin)
    p.setPen(pen)
    p.setBrush(QtCore.Qt.NoBrush)
    path = QtGui.QPainterPath(QtCore.QPointF(80, 18))
    path.quadTo(QtCore.QPointF(112, 22), QtCore.QPointF(108, 46))
    p.drawPath(path)
    p.setBrush(QtGui.QColor("#e5e7eb"))
    p.setPen(QtCore.Qt.NoPen)
    p.drawPolygon(QtGui.QPolygonF([QtCore.QPointF(100, 42), QtCore.QPointF(116, 42), QtCore.QPointF(108, 54)]))
    p.end()
    return image


def main(argv=None) -> int:
    QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    image = draw()
    for target in TARGETS:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(target), "PNG"):
            print(f"could not write {target}", file=sys.stderr)
            return 1
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
