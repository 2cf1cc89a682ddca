"""Strict stand-ins for the ``slicer``, ``vtk``, ``qt`` and ``ctk`` modules.

They let ``MultimodalRegistration/MultimodalRegistration.py`` be imported and its Logic run outside
Slicer, against an MRML scene that behaves like Slicer's where the module depends on it:

* only the classes, methods and functions the module uses exist, each with the parameter list of
  the real one (checked against Slicer's sources, tags v5.6.0 and later: ``vtkMRMLScene.h``,
  ``vtkMRMLNode.h``, ``vtkMRMLVolumeNode.h``, ``vtkMRMLSegmentationNode.h``,
  ``vtkSlicerSegmentationsModuleLogic.h``, ``Base/Python/slicer/util.py`` ...). Any other attribute is
  missing, so a misspelt or removed call raises AttributeError, and a wrong argument count raises
  TypeError. VTK-wrapped methods take positional arguments only, as VTK's Python wrapping does;
* nodes carry real geometry (IJK-to-RAS matrices, numpy voxel arrays) and parent transforms, and
  the segmentation logic follows ``vtkSlicerSegmentationsModuleLogic.cxx``:
  ``ImportLabelmapToSegmentationNode`` maps the labelmap into the segmentation's frame through both
  nodes' parent transforms ("Apply parent transforms if any"); ``ExportSegmentsToLabelmapNode``
  resamples the segments (nearest neighbour) onto the reference volume's grid through the transform
  between the reference's and the segmentation's parents
  (``GenerateMergedLabelmapInReferenceGeometry``) and puts the labelmap under the reference's parent;
* volume storage nodes write and read real NIfTI files (nibabel), without applying parent
  transforms, as ``vtkMRMLVolumeArchetypeStorageNode`` does.

What Slicer does that the module does not depend on (rendering, subject hierarchy, events other
than the QTimer's ``timeout()``) is left out.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

MODULE_PY = Path(__file__).resolve().parents[2] / "MultimodalRegistration" / "MultimodalRegistration.py"


# =============================================================================================== vtk
class vtkObject:
    def UnRegister(self, o, /):
        pass

    def GetClassName(self):
        return type(self).__name__

    def IsA(self, className, /):
        return int(any(c.__name__ == className for c in type(self).__mro__))


class vtkMatrix4x4(vtkObject):
    def __init__(self):
        self._m = np.eye(4)

    def SetElement(self, i, j, value, /):
        self._m[int(i), int(j)] = float(value)

    def GetElement(self, i, j, /):
        return float(self._m[int(i), int(j)])

    def DeepCopy(self, source, /):
        self._m = np.array(source._m, dtype=float)

    def Identity(self):
        self._m = np.eye(4)


def _matrix(array) -> vtkMatrix4x4:
    m = vtkMatrix4x4()
    m._m = np.array(array, dtype=float)
    return m


class vtkStringArray(vtkObject):
    def __init__(self):
        self._values = []

    def InsertNextValue(self, value, /):
        self._values.append(str(value))
        return len(self._values) - 1

    def GetNumberOfValues(self):
        return len(self._values)

    def GetValue(self, index, /):
        return self._values[int(index)]


class vtkImageData(vtkObject):
    """Voxels as a numpy array in Slicer's KJI order."""

    def __init__(self):
        self._array = np.zeros((0, 0, 0), dtype=np.int16)

    def GetDimensions(self):
        k, j, i = self._array.shape
        return (i, j, k)

    def GetExtent(self):
        i, j, k = self.GetDimensions()
        return (0, i - 1, 0, j - 1, 0, k - 1)


class vtkCommand:
    ModifiedEvent = 33


# =============================================================================================== MRML
class vtkMRMLNode(vtkObject):
    def __init__(self):
        self._id = None
        self._name = ""
        self._attributes = {}
        self._scene = None

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name, /):
        self._name = str(name)

    def GetAttribute(self, name, /):
        return self._attributes.get(name)

    def SetAttribute(self, name, value, /):
        self._attributes[str(name)] = None if value is None else str(value)

    def GetScene(self):
        return self._scene


class vtkMRMLStorableNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._storageNodeID = None

    def GetStorageNode(self):
        return self._scene.GetNodeByID(self._storageNodeID) if self._scene and self._storageNodeID else None

    def GetStorageNodeID(self):
        return self._storageNodeID

    def SetAndObserveStorageNodeID(self, storageNodeID, /):
        self._storageNodeID = storageNodeID


class vtkMRMLTransformableNode(vtkMRMLStorableNode):
    def __init__(self):
        super().__init__()
        self._transformNodeID = None

    def SetAndObserveTransformNodeID(self, transformNodeID, /):
        if transformNodeID is not None and not isinstance(transformNodeID, str):
            raise TypeError("SetAndObserveTransformNodeID takes a node ID (str) or None")
        self._transformNodeID = transformNodeID or None

    def GetTransformNodeID(self):
        return self._transformNodeID

    def GetParentTransformNode(self):
        if not self._transformNodeID or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._transformNodeID)


def _to_world(node) -> np.ndarray:
    """The node's local-to-world (RAS) matrix: the product of its parents' transforms to parent."""
    m = np.eye(4)
    parent = node.GetParentTransformNode() if node is not None else None
    seen = set()
    while parent is not None:
        if id(parent) in seen:
            raise RuntimeError("transform loop")
        seen.add(id(parent))
        m = parent._toParent @ m
        parent = parent.GetParentTransformNode()
    return m


def _between(source, target) -> np.ndarray:
    """vtkMRMLTransformNode::GetTransformBetweenNodes(source parent, target parent) as a matrix."""
    return np.linalg.inv(_to_world(target)) @ _to_world(source)


class vtkMRMLDisplayableNode(vtkMRMLTransformableNode):
    DISPLAY_CLASS = "vtkMRMLDisplayNode"

    def __init__(self):
        super().__init__()
        self._displayNodeIDs = []

    def GetDisplayNode(self):
        return self.GetNthDisplayNode(0) if self._displayNodeIDs else None

    def GetNumberOfDisplayNodes(self):
        return len(self._displayNodeIDs)

    def GetNthDisplayNode(self, n, /):
        return self._scene.GetNodeByID(self._displayNodeIDs[int(n)]) if self._scene else None

    def GetNthDisplayNodeID(self, n, /):
        return self._displayNodeIDs[int(n)]

    def SetAndObserveDisplayNodeID(self, displayNodeID, /):
        self._displayNodeIDs = [displayNodeID] if displayNodeID else []

    def CreateDefaultDisplayNodes(self):
        if self.GetDisplayNode() is None and self._scene is not None:
            display = self._scene.AddNewNodeByClass(self.DISPLAY_CLASS)
            self.SetAndObserveDisplayNodeID(display.GetID())


class vtkMRMLDisplayNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._colorNodeID = None
        self._visibility = True

    def SetAndObserveColorNodeID(self, colorNodeID, /):
        self._colorNodeID = colorNodeID

    def GetColorNodeID(self):
        return self._colorNodeID

    def GetColorNode(self):
        return self._scene.GetNodeByID(self._colorNodeID) if self._scene and self._colorNodeID else None


class vtkMRMLVolumeDisplayNode(vtkMRMLDisplayNode):
    pass


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    pass


class vtkMRMLLabelMapVolumeDisplayNode(vtkMRMLVolumeDisplayNode):
    pass


class vtkMRMLSegmentationDisplayNode(vtkMRMLDisplayNode):
    def __init__(self):
        super().__init__()
        self._fill2D = True
        self._outline2D = True

    def SetVisibility2DFill(self, visible, /):
        self._fill2D = bool(visible)

    def SetVisibility2DOutline(self, visible, /):
        self._outline2D = bool(visible)


class vtkMRMLColorNode(vtkMRMLStorableNode):
    User = 13


class vtkMRMLColorTableNode(vtkMRMLColorNode):
    def __init__(self):
        super().__init__()
        self._type = None
        self._colors = []  # (name, (r, g, b, a))

    def SetTypeToUser(self):
        self._type = self.User

    def SetNumberOfColors(self, n, /):
        n = int(n)
        self._colors = (self._colors + [(None, (0.0, 0.0, 0.0, 0.0))] * n)[:n]

    def GetNumberOfColors(self):
        return len(self._colors)

    def SetColor(self, entry, name, r, g, b, a=1.0, /):
        if not 0 <= int(entry) < len(self._colors):
            return 0
        self._colors[int(entry)] = (str(name), (float(r), float(g), float(b), float(a)))
        return 1

    def GetColorName(self, entry, /):
        if 0 <= int(entry) < len(self._colors):
            return self._colors[int(entry)][0]
        return None

    def _rgba(self, entry):
        return self._colors[int(entry)][1] if 0 <= int(entry) < len(self._colors) else (0.5, 0.5, 0.5, 1.0)


class vtkMRMLStorageNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._fileName = None
        self._compression = False

    def SetFileName(self, fileName, /):
        self._fileName = str(fileName)

    def GetFileName(self):
        return self._fileName

    def UseCompressionOn(self):
        self._compression = True


class vtkMRMLVolumeArchetypeStorageNode(vtkMRMLStorageNode):
    """NIfTI through nibabel. Like Slicer's, it writes the node's own geometry (no parent transform)."""

    def WriteData(self, refNode, /):
        import nibabel as nib

        if not refNode.IsA("vtkMRMLVolumeNode") or refNode.GetImageData() is None:
            return 0
        array = refNode.GetImageData()._array
        img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), refNode._ijkToRas)
        nib.save(img, self._fileName)
        return 1

    def ReadData(self, refNode, /):
        import nibabel as nib

        img = nib.load(self._fileName)
        data = np.asarray(img.dataobj)
        if refNode.IsA("vtkMRMLLabelMapVolumeNode"):
            data = np.rint(data).astype(np.int16)
        image = vtkImageData()
        image._array = np.ascontiguousarray(data.transpose(2, 1, 0))
        refNode.SetAndObserveImageData(image)
        refNode._ijkToRas = np.array(img.affine, dtype=float)
        return 1


class vtkMRMLVolumeNode(vtkMRMLDisplayableNode):
    def __init__(self):
        super().__init__()
        self._imageData = None
        self._ijkToRas = np.eye(4)

    def GetImageData(self):
        return self._imageData

    def SetAndObserveImageData(self, imageData, /):
        self._imageData = imageData

    def GetIJKToRASMatrix(self, mat, /):
        mat._m = np.array(self._ijkToRas, dtype=float)

    def SetIJKToRASMatrix(self, mat, /):
        self._ijkToRas = np.array(mat._m, dtype=float)

    def GetIJKToRASDirectionMatrix(self, mat, /):
        m = np.eye(4)
        m[:3, :3] = self._ijkToRas[:3, :3] / np.linalg.norm(self._ijkToRas[:3, :3], axis=0)
        mat._m = m

    def CopyOrientation(self, node, /):
        self._ijkToRas = np.array(node._ijkToRas, dtype=float)


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    DISPLAY_CLASS = "vtkMRMLScalarVolumeDisplayNode"


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    DISPLAY_CLASS = "vtkMRMLLabelMapVolumeDisplayNode"


class vtkMRMLTransformNode(vtkMRMLDisplayableNode):
    def __init__(self):
        super().__init__()
        self._toParent = np.eye(4)

    def GetMatrixTransformToWorld(self, mat, /):
        mat._m = _to_world(self) @ self._toParent


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    def SetMatrixTransformToParent(self, mat, /):
        self._toParent = np.array(mat._m, dtype=float)

    def GetMatrixTransformToParent(self, mat, /):
        mat._m = np.array(self._toParent, dtype=float)


class vtkSegment(vtkObject):
    """A binary mask (KJI) with its IJK-to-RAS matrix in the segmentation node's frame."""

    def __init__(self):
        self._name = ""
        self._color = (0.5, 0.5, 0.5)
        self._labelValue = 1
        self._mask = np.zeros((0, 0, 0), dtype=bool)
        self._ijkToRas = np.eye(4)

    def GetName(self):
        return self._name

    def SetName(self, name, /):
        self._name = str(name)

    def GetColor(self):
        return tuple(self._color)

    def SetColor(self, r, g, b, /):
        self._color = (float(r), float(g), float(b))

    def GetLabelValue(self):
        return self._labelValue


class vtkSegmentation(vtkObject):
    def __init__(self):
        self._segments = []  # (id, vtkSegment)

    def GetNumberOfSegments(self):
        return len(self._segments)

    def GetNthSegmentID(self, index, /):
        return self._segments[int(index)][0]

    def GetSegment(self, segmentId, /):
        return next((s for i, s in self._segments if i == segmentId), None)

    def RemoveAllSegments(self):
        self._segments = []

    def AddSegment(self, segment, segmentId="", insertBeforeSegmentId="", /):
        ids = {i for i, _ in self._segments}
        if not segmentId:
            base = segment.GetName() or "Segment"
            segmentId, n = base, 1
            while segmentId in ids:
                segmentId, n = f"{base}_{n}", n + 1
        self._segments.append((segmentId, segment))
        return segmentId


class vtkMRMLSegmentationNode(vtkMRMLDisplayableNode):
    DISPLAY_CLASS = "vtkMRMLSegmentationDisplayNode"

    def __init__(self):
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._referenceGeometry = None

    def GetSegmentation(self):
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode, /):
        """As vtkMRMLSegmentationNode.cxx: the volume's geometry, moved into this node's frame when
        their parent transforms differ."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            return
        self._referenceGeometry = (_between(volumeNode, self) @ volumeNode._ijkToRas,
                                   volumeNode.GetImageData().GetDimensions())


class vtkMRMLTableNode(vtkMRMLStorableNode):
    def __init__(self):
        super().__init__()
        self._columns = {}


class vtkMRMLPlotSeriesNode(vtkMRMLNode):
    PlotTypeLine, PlotTypeBar, PlotTypeScatter, PlotTypeScatterBar = range(4)
    MarkerStyleNone, MarkerStyleCross, MarkerStylePlus, MarkerStyleSquare, MarkerStyleCircle, MarkerStyleDiamond = range(6)

    def SetAndObserveTableNodeID(self, tableNodeID, /):
        self._table = tableNodeID

    def SetXColumnName(self, name, /):
        self._x = name

    def SetYColumnName(self, name, /):
        self._y = name

    def SetPlotType(self, plotType, /):
        self._type = int(plotType)

    def SetMarkerStyle(self, style, /):
        self._marker = int(style)


class vtkMRMLPlotChartNode(vtkMRMLNode):
    def __init__(self):
        super().__init__()
        self._series = []

    def RemoveAllPlotSeriesNodeIDs(self):
        self._series = []

    def AddAndObservePlotSeriesNodeID(self, plotSeriesNodeID, /):
        self._series.append(plotSeriesNodeID)

    def SetTitle(self, title, /):
        self._title = title

    def SetXAxisTitle(self, title, /):
        self._xTitle = title

    def SetYAxisTitle(self, title, /):
        self._yTitle = title

    def SetLegendVisibility(self, visible, /):
        self._legend = bool(visible)


MRML_CLASSES = {c.__name__: c for c in (
    vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLLinearTransformNode, vtkMRMLSegmentationNode,
    vtkMRMLScalarVolumeDisplayNode, vtkMRMLLabelMapVolumeDisplayNode, vtkMRMLSegmentationDisplayNode,
    vtkMRMLColorTableNode, vtkMRMLVolumeArchetypeStorageNode, vtkMRMLTableNode, vtkMRMLPlotSeriesNode,
    vtkMRMLPlotChartNode)}


class vtkMRMLScene(vtkObject):
    StartCloseEvent = 66001
    EndCloseEvent = 66002

    def __init__(self):
        self._nodes = []
        self._counter = {}
        generic = self.AddNewNodeByClass("vtkMRMLColorTableNode", "GenericAnatomyColors")
        generic.SetTypeToUser()
        generic.SetNumberOfColors(256)
        for v in range(1, 256):
            generic.SetColor(v, f"anatomy_{v}", (v * 37 % 255) / 255, (v * 91 % 255) / 255, (v * 53 % 255) / 255, 1.0)
        self._genericColorNodeID = generic.GetID()

    def CreateNodeByClass(self, className, /):
        cls = MRML_CLASSES.get(className)
        return cls() if cls is not None else None

    def AddNode(self, node, /):
        cls = node.GetClassName()
        self._counter[cls] = self._counter.get(cls, 0) + 1
        node._id = f"{cls}{self._counter[cls]}"
        node._scene = self
        self._nodes.append(node)
        return node

    def AddNewNodeByClass(self, className, nodeBaseName="", /):
        node = self.CreateNodeByClass(className)
        if node is None:
            return None
        node.SetName(nodeBaseName or className.replace("vtkMRML", "").replace("Node", ""))
        return self.AddNode(node)

    def RemoveNode(self, node, /):
        if node in self._nodes:
            self._nodes.remove(node)
            node._scene = None

    def IsNodePresent(self, node, /):
        return int(any(n is node for n in self._nodes))

    def GetNumberOfNodes(self):
        return len(self._nodes)

    def GetNthNode(self, n, /):
        return self._nodes[int(n)]

    def GetNodeByID(self, nodeID, /):
        return next((n for n in self._nodes if n.GetID() == nodeID), None)

    def GetFirstNodeByName(self, name, /):
        return next((n for n in self._nodes if n.GetName() == name), None)

    def GetNodesByClass(self, className, /):
        return [n for n in self._nodes if n.IsA(className)]

    # -- for tests (not Slicer API) ----------------------------------------------------------------
    def _volume(self, className, name, array_kji, ijk_to_ras):
        node = self.AddNewNodeByClass(className, name)
        image = vtkImageData()
        image._array = np.ascontiguousarray(array_kji)
        node.SetAndObserveImageData(image)
        node._ijkToRas = np.array(ijk_to_ras, dtype=float)
        node.CreateDefaultDisplayNodes()
        if className == "vtkMRMLLabelMapVolumeNode":
            node.GetDisplayNode().SetAndObserveColorNodeID(self._genericColorNodeID)
        return node


# ================================================================================ segmentations logic
def _lookup(mask, ijk_to_ras, points_ras):
    """Nearest-neighbour values of ``mask`` (KJI) at RAS points (4 x N), 0 outside."""
    ijk = np.rint(np.linalg.inv(ijk_to_ras) @ points_ras).astype(np.int64)
    k, j, i = mask.shape
    inside = (ijk[0] >= 0) & (ijk[0] < i) & (ijk[1] >= 0) & (ijk[1] < j) & (ijk[2] >= 0) & (ijk[2] < k)
    out = np.zeros(points_ras.shape[1], dtype=mask.dtype)
    out[inside] = mask[ijk[2][inside], ijk[1][inside], ijk[0][inside]]
    return out


def _grid_points(ijk_to_ras, dims_ijk):
    ni, nj, nk = dims_ijk
    kk, jj, ii = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)]).astype(float)
    return ijk_to_ras @ ijk


class vtkSlicerSegmentationsModuleLogic(vtkObject):
    def ImportLabelmapToSegmentationNode(self, labelmapNode, segmentationNode, insertBeforeSegmentId="", /):
        if not isinstance(insertBeforeSegmentId, str):
            raise TypeError("this stand-in models the (labelmapNode, segmentationNode, insertBeforeSegmentId) overload")
        if labelmapNode is None or labelmapNode.GetImageData() is None or segmentationNode is None:
            return False
        segmentationNode.CreateDefaultDisplayNodes()
        geometry = np.array(labelmapNode._ijkToRas)
        # "Apply parent transforms if any"
        if labelmapNode.GetParentTransformNode() or segmentationNode.GetParentTransformNode():
            geometry = _between(labelmapNode, segmentationNode) @ geometry
        array = labelmapNode.GetImageData()._array
        display = labelmapNode.GetDisplayNode()
        colorNode = display.GetColorNode() if display is not None else None
        values = [int(v) for v in np.unique(array) if v != 0]
        for value in values:
            segment = vtkSegment()
            segment._labelValue = value
            name = colorNode.GetColorName(value) if colorNode is not None else None
            if not name and len(values) == 1:
                name = labelmapNode.GetName()
            segment.SetName(name or f"Label_{value}")
            if colorNode is not None:
                segment.SetColor(*colorNode._rgba(value)[:3])
            segment._mask = array == value
            segment._ijkToRas = geometry
            segmentationNode.GetSegmentation().AddSegment(segment)
        return True

    def ExportSegmentsToLabelmapNode(self, segmentationNode, segmentIDs, labelmapNode, referenceVolumeNode=None,
                                     extentComputationMode=1, exportColorTable=None, /):
        if segmentationNode is None or labelmapNode is None:
            return False
        if referenceVolumeNode is None or exportColorTable is not None:
            raise NotImplementedError("the stand-in models export onto a reference volume without a color table")
        ids = segmentIDs._values if isinstance(segmentIDs, vtkStringArray) else list(segmentIDs)
        segmentation = segmentationNode.GetSegmentation()
        ids = ids or [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        parent = referenceVolumeNode.GetParentTransformNode()
        labelmapNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
        dims = referenceVolumeNode.GetImageData().GetDimensions()
        # reference voxel centres in the segmentation node's frame (GenerateMergedLabelmapInReferenceGeometry)
        points = _between(referenceVolumeNode, segmentationNode) @ _grid_points(referenceVolumeNode._ijkToRas, dims)
        merged = np.zeros(points.shape[1], dtype=np.int16)
        for index, segmentId in enumerate(ids):
            segment = segmentation.GetSegment(segmentId)
            hit = _lookup(segment._mask, segment._ijkToRas, points).astype(bool)
            merged[hit] = index + 1
        image = vtkImageData()
        image._array = merged.reshape(dims[2], dims[1], dims[0])
        labelmapNode.SetAndObserveImageData(image)
        labelmapNode._ijkToRas = np.array(referenceVolumeNode._ijkToRas)
        labelmapNode.CreateDefaultDisplayNodes()
        scene = labelmapNode.GetScene()
        colorTable = scene.AddNewNodeByClass("vtkMRMLColorTableNode", labelmapNode.GetName() + "_ColorTable")
        colorTable.SetTypeToUser()
        colorTable.SetNumberOfColors(len(ids) + 1)
        for index, segmentId in enumerate(ids):
            segment = segmentation.GetSegment(segmentId)
            colorTable.SetColor(index + 1, segment.GetName(), *segment.GetColor())
        labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())
        return True


class _PlotsLogic:
    def __init__(self):
        self.shown = []

    def ShowChartInLayout(self, chartNode, /):
        self.shown.append(chartNode)


# ============================================================================================== Qt
class QTimer:
    """``connect("timeout()", slot)``, ``setInterval``, ``start``, ``stop`` and the ``active`` and
    ``interval`` properties, as PythonQt exposes them. ``slicer.app.processEvents()`` fires the
    ``timeout()`` of every active timer."""

    _live = []

    def __init__(self, parent=None):
        self._active = False
        self._interval = 0
        self._slots = []
        QTimer._live.append(self)

    def setInterval(self, msec):
        self._interval = int(msec)

    def connect(self, signal, slot):
        if signal != "timeout()":
            raise ValueError(f"QTimer has no signal {signal!r}")
        self._slots.append(slot)

    def start(self):
        self._active = True

    def stop(self):
        self._active = False

    @property
    def active(self):
        return self._active

    @property
    def interval(self):
        return self._interval


def fire_timers():
    """One round of ``timeout()`` on every active QTimer (what Qt's event loop would do)."""
    for timer in list(QTimer._live):
        if timer.active:
            for slot in list(timer._slots):
                slot()


class _Application:
    def processEvents(self):
        fire_timers()

    def testingEnabled(self):
        return True


# ============================================================================================== slicer.util
def _make_util(slicer):
    def _load(filename, className, properties):
        scene = slicer.mrmlScene
        node = scene.AddNewNodeByClass(className, properties.get("name") or Path(filename).name.split(".")[0])
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(filename))
        if not storage.ReadData(node):
            raise RuntimeError(f"Failed to load volume: {filename}")
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        if className == "vtkMRMLLabelMapVolumeNode":
            node.GetDisplayNode().SetAndObserveColorNodeID(scene._genericColorNodeID)
        return node

    def loadVolume(filename, properties={}, returnNode=False):
        cls = "vtkMRMLLabelMapVolumeNode" if properties.get("labelmap") else "vtkMRMLScalarVolumeNode"
        return _load(filename, cls, properties)

    def loadLabelVolume(filename, properties={}, returnNode=False):
        return _load(filename, "vtkMRMLLabelMapVolumeNode", properties)

    def getNodesByClass(className, scene=None):
        return (scene or slicer.mrmlScene).GetNodesByClass(className)

    def arrayFromVolume(volumeNode):
        return volumeNode.GetImageData()._array

    def updateVolumeFromArray(volumeNode, narray):
        image = volumeNode.GetImageData()
        if image is None:
            image = vtkImageData()
            volumeNode.SetAndObserveImageData(image)
        image._array = np.array(narray)

    def updateTableFromArray(tableNode, narrays, columnNames=None):
        tableNode._columns = {name: np.asarray(narrays)[:, i] for i, name in enumerate(columnNames or [])}
        return tableNode

    def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                             foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
        slicer._sliceLayers = dict(background=background, foreground=foreground, label=label)

    def tempDirectory(key="__SlicerTemp__", tempDir=None, includeDateTime=True):
        return tempfile.mkdtemp(prefix=key, dir=tempDir)

    def startupEnvironment():
        return dict(os.environ)

    def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
        raise AssertionError(f"errorDisplay called in a test: {text}")

    def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
        raise AssertionError(f"confirmOkCancelDisplay called in a test: {text}")

    class VTKObservationMixin:
        def __init__(self):
            self.Observations = []

    return _module("slicer.util", **{f.__name__: f for f in (
        loadVolume, loadLabelVolume, getNodesByClass, arrayFromVolume, updateVolumeFromArray, updateTableFromArray,
        setSliceViewerLayers, tempDirectory, startupEnvironment, errorDisplay, confirmOkCancelDisplay)},
        VTKObservationMixin=VTKObservationMixin)


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def modules() -> dict:
    """Fresh ``slicer``, ``slicer.*``, ``vtk``, ``qt`` and ``ctk`` modules with an empty scene."""

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleTest:
        pass

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    slicer = _module("slicer")
    slicer.__path__ = []  # a package: `from slicer import packaging` fails as on Slicer < 5.12
    slicer.mrmlScene = vtkMRMLScene()
    slicer.app = _Application()
    segmentationsLogic = vtkSlicerSegmentationsModuleLogic()
    plotsLogic = _PlotsLogic()
    slicer.modules = types.SimpleNamespace(
        segmentations=types.SimpleNamespace(logic=lambda: segmentationsLogic),
        plots=types.SimpleNamespace(logic=lambda: plotsLogic))
    for name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode",
                 "vtkMRMLPlotSeriesNode", "vtkMRMLLinearTransformNode", "vtkMRMLNode"):
        setattr(slicer, name, globals()[name])
    subs = {
        "ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest),
        "util": _make_util(slicer),
        "parameterNodeWrapper": _module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                        WithinRange=WithinRange),
        "i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
    }
    mods = {"slicer": slicer}
    for name, mod in subs.items():
        setattr(slicer, name, mod)
        mods[f"slicer.{name}"] = mod
    mods["vtk"] = _module("vtk", vtkMatrix4x4=vtkMatrix4x4, vtkStringArray=vtkStringArray, vtkImageData=vtkImageData,
                          vtkCommand=vtkCommand)
    mods["qt"] = _module("qt", QTimer=QTimer)
    mods["ctk"] = _module("ctk")
    return mods


def install(monkeypatch) -> dict:
    """Put fresh stand-ins into sys.modules for the duration of a test (pytest monkeypatch)."""
    QTimer._live.clear()
    mods = modules()
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    # the Slicer-side helper modules bind `slicer`/`vtk` when imported: import them again against these
    for name in [n for n in sys.modules if n.split(".")[0] == "MultimodalRegistrationSlicerLib"]:
        monkeypatch.delitem(sys.modules, name)
    return mods


def load_module(name: str = "_mmreg_module_under_test"):
    """Import MultimodalRegistration.py (stand-ins must be installed first)."""
    spec = importlib.util.spec_from_file_location(name, MODULE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def put_fake_pythonslicer_on_path(monkeypatch, folder, script: str) -> None:
    """An executable ``PythonSlicer`` with ``script`` as its content in ``folder/bin``, first on PATH: the
    core process the module starts."""
    import os
    import stat

    bindir = Path(folder) / "bin"
    bindir.mkdir()
    exe = bindir / "PythonSlicer"
    exe.write_text(script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
