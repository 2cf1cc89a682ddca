"""Small PySide6 stand-ins for the CTK / qMRML widget classes used in MultimodalRegistration.ui.

Slicer's ``.ui`` files name classes that only exist inside Slicer (``ctkCollapsibleButton``,
``qMRMLNodeComboBox``, ...). ``QUiLoader`` falls back to the ``<extends>`` base class for unknown
names, which renders as empty gaps; registering these stand-ins makes the panel render roughly as
it does in Slicer, so the packaging test can load it and ``tools/render_panel.py`` can take a
picture of it without Slicer.

Only what the panel needs is imitated: a title bar with a collapse arrow, a combo box showing a
node name (or "None"), and a path line edit with a browse button. Properties Slicer sets from the
``.ui`` (``nodeTypes``, ``noneEnabled``, ``filters``...) are accepted as Qt properties so the
loader does not complain and tests can read them back.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtCore import Property  # noqa: E402

#: Class names this module provides (also the names the packaging test expects to be registered).
STUB_CLASS_NAMES = ("qMRMLWidget", "ctkCollapsibleButton", "qMRMLNodeComboBox", "ctkPathLineEdit")


class qMRMLWidget(QtWidgets.QWidget):
    """The top-level MRML-aware widget; here just a QWidget."""


class ctkCollapsibleButton(QtWidgets.QWidget):
    """A bold title bar with an arrow; clicking it (or ``collapsed = True``) hides the contents.

    The ``.ui`` puts a layout directly on this widget, so the title is drawn in the layout's top
    margin. The collapsed state is applied again in ``showEvent`` because QUiLoader sets
    properties before the children exist.
    """

    HEADER = 26

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Maximum)

    def getText(self):
        return self._text

    def setText(self, value):
        self._text = value
        self.update()

    text = Property(str, getText, setText)

    def isCollapsed(self):
        return self._collapsed

    def setCollapsed(self, value):
        self._collapsed = bool(value)
        self._apply()

    collapsed = Property(bool, isCollapsed, setCollapsed)

    def contentWidgets(self):
        return [w for w in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)]

    def _apply(self):
        lay = self.layout()
        if lay is not None:
            m = lay.contentsMargins()
            lay.setContentsMargins(max(m.left(), 8), self.HEADER + 6, max(m.right(), 8), 6)
        for w in self.contentWidgets():
            w.setVisible(not self._collapsed)
        if self._collapsed:
            self.setFixedHeight(self.HEADER + 2)
        else:
            self.setMinimumHeight(0)
            self.setMaximumHeight(16777215)
        self.updateGeometry()
        self.update()

    def showEvent(self, event):
        self._apply()
        super().showEvent(event)

    def mousePressEvent(self, event):
        if event.position().y() <= self.HEADER:
            self.setCollapsed(not self._collapsed)
        super().mousePressEvent(event)

    def paintEvent(self, event):
        p = QtGui.QPainter(self)
        opt = QtWidgets.QStyleOptionButton()
        opt.initFrom(self)
        opt.rect = QtCore.QRect(0, 0, self.width(), self.HEADER)
        self.style().drawControl(QtWidgets.QStyle.CE_PushButton, opt, p, self)
        arrow = QtWidgets.QStyleOption()
        arrow.initFrom(self)
        arrow.rect = QtCore.QRect(6, (self.HEADER - 12) // 2, 12, 12)
        prim = QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed else QtWidgets.QStyle.PE_IndicatorArrowDown
        self.style().drawPrimitive(prim, arrow, p, self)
        font = p.font()
        font.setBold(True)
        p.setFont(font)
        p.drawText(QtCore.QRect(24, 0, self.width() - 30, self.HEADER),
                   QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft, self._text)
        if not self._collapsed:
            p.setPen(self.palette().color(QtGui.QPalette.Mid))
            p.drawRect(self.rect().adjusted(0, self.HEADER, -1, -1))
        p.end()


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Shows one item: the node name given by ``setDemoNodeName`` or "None"/"Select a volume"."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._nodeTypes = []
        self._noneEnabled = False
        self._flags = {}
        self._refresh()

    def _refresh(self, name=None):
        self.clear()
        if name:
            self.addItem(name)
        elif self._noneEnabled:
            self.addItem("None")
        else:
            self.addItem("")

    def setDemoNodeName(self, name):
        self._refresh(name)

    def getNodeTypes(self):
        return list(self._nodeTypes)

    def setNodeTypes(self, value):
        self._nodeTypes = list(value)

    nodeTypes = Property("QStringList", getNodeTypes, setNodeTypes)

    def getNoneEnabled(self):
        return self._noneEnabled

    def setNoneEnabled(self, value):
        self._noneEnabled = bool(value)
        self._refresh()

    noneEnabled = Property(bool, getNoneEnabled, setNoneEnabled)

    def _flag(name):  # noqa: N805 - property factory used in the class body
        def getter(self):
            return self._flags.get(name, False)

        def setter(self, value):
            self._flags[name] = bool(value)

        return Property(bool, getter, setter)

    showChildNodeTypes = _flag("showChildNodeTypes")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    editEnabled = _flag("editEnabled")
    renameEnabled = _flag("renameEnabled")
    showHidden = _flag("showHidden")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    del _flag


class ctkPathLineEdit(QtWidgets.QWidget):
    """A line edit and a browse button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QtWidgets.QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.lineEdit = QtWidgets.QLineEdit(self)
        self.browseButton = QtWidgets.QToolButton(self)
        self.browseButton.setText("...")
        lay.addWidget(self.lineEdit, 1)
        lay.addWidget(self.browseButton)
        self._nameFilters = []
        self._filters = 0

    def getCurrentPath(self):
        return self.lineEdit.text()

    def setCurrentPath(self, value):
        self.lineEdit.setText(value)

    currentPath = Property(str, getCurrentPath, setCurrentPath)

    def getNameFilters(self):
        return list(self._nameFilters)

    def setNameFilters(self, value):
        self._nameFilters = list(value)

    nameFilters = Property("QStringList", getNameFilters, setNameFilters)

    def getFilters(self):
        return self._filters

    def setFilters(self, value):
        self._filters = value

    filters = Property(int, getFilters, setFilters)


STUB_CLASSES = (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit)


def application():
    """The QApplication (created offscreen on first use)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(["slicer_stubs"])
    return app


def load_ui(path, parent=None):
    """Load a Slicer ``.ui`` file with the stand-ins registered; returns the top-level widget."""
    from PySide6.QtUiTools import QUiLoader

    application()
    loader = QUiLoader()
    for cls in STUB_CLASSES:
        loader.registerCustomWidget(cls)
    f = QtCore.QFile(str(path))
    if not f.open(QtCore.QIODevice.ReadOnly):
        raise OSError(f"cannot open {path}")
    try:
        widget = loader.load(f, parent)
    finally:
        f.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path}: {loader.errorString()}")
    return widget


def child(widget, name):
    """The descendant named ``name`` (like ``slicer.util.findChild``); None if absent."""
    if widget.objectName() == name:
        return widget
    return widget.findChild(QtCore.QObject, name)


def render(widget, path, width=420):
    """Lay out, show offscreen and save a PNG of ``widget``; returns the QImage."""
    app = application()
    widget.resize(width, 10)
    widget.show()
    for _ in range(3):
        app.processEvents()
    widget.adjustSize()
    widget.resize(width, widget.sizeHint().height())
    for _ in range(3):
        app.processEvents()
    pixmap = widget.grab()
    image = pixmap.toImage()
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not image.save(str(path)):
            raise OSError(f"could not write {path}")
    return image
