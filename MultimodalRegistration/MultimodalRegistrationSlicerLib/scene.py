"""Scene import and export for the Slicer module (imports slicer and vtk: runs inside Slicer only).

* export: :func:`writeVolume` and :func:`writeLabels` write the inputs to NIfTI for the child process,
  labels on their image's grid and in its own frame;
* import: :func:`importResults` turns a finished run's output folder into nodes (the result transform
  with the coronal volume under it, the synthetic T2, the transferred segmentations, the Paper method's
  MSE plot), replacing the nodes an earlier run made on the same inputs (found by :data:`ATTR_ROLE` and
  :data:`ATTR_KEY`);
* :func:`removeNodes` / :func:`removeNodesAddedSince` clean up temporary nodes.

Transform convention: ``transform.json`` holds ``moving_to_fixed_ras``, the map of a point in the
coronal (moving) RAS world to the axial (fixed) RAS world. That is exactly Slicer's "transform to
parent" of a linear transform node, so the matrix is set with ``SetMatrixTransformToParent`` and the
coronal volume is placed under the node.
"""
import logging
from pathlib import Path

import slicer
import vtk

from MultimodalRegistrationLib.contract import OUTPUT_FILES, OutputError, check_matrix4x4, read_transform_json

from .i18n import _
from .labelmaps import resample_labels_nearest, same_grid
from .results import format_metrics, missing_outputs, subset_curve

#: Node attributes that mark the outputs of a run, so a second run replaces them.
ATTR_ROLE = "MultimodalRegistration.Role"
ATTR_KEY = "MultimodalRegistration.Inputs"
ATTR_METRICS = "MultimodalRegistration.Metrics"


def nodeIDs() -> set:
    """IDs of every node in the scene (to find what a Slicer call added)."""
    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def removeNodes(*nodes) -> None:
    """Remove nodes with their display and storage nodes (shared color tables stay)."""
    scene = slicer.mrmlScene
    for node in nodes:
        if node is None or not scene.IsNodePresent(node):
            continue
        dependents = []
        if hasattr(node, "GetNumberOfDisplayNodes"):
            dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if hasattr(node, "GetStorageNode"):
            dependents.append(node.GetStorageNode())
        scene.RemoveNode(node)
        for dependent in dependents:
            if dependent is not None and scene.IsNodePresent(dependent):
                scene.RemoveNode(dependent)


def removeNodesAddedSince(before: set, keep=()) -> None:
    """Remove what was added to the scene since ``before`` (see _nodeIDs), except ``keep``
    and the display/storage nodes of ``keep``."""
    keepIDs = set()
    for node in keep:
        if node is None:
            continue
        keepIDs.add(node.GetID())
        if hasattr(node, "GetNumberOfDisplayNodes"):
            keepIDs |= {node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())}
        if hasattr(node, "GetStorageNodeID") and node.GetStorageNodeID():
            keepIDs.add(node.GetStorageNodeID())
    for nodeID in sorted(nodeIDs() - before - keepIDs):
        node = slicer.mrmlScene.GetNodeByID(nodeID)
        if node is not None:
            slicer.mrmlScene.RemoveNode(node)


def guessInputs():
    """(coronal, axial) volumes picked by slice orientation, for a first-use default."""
    coronal = axial = None
    for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetImageData() is None:
            continue
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASDirectionMatrix(matrix)
        dims = node.GetImageData().GetDimensions()
        sliceAxis = min(range(3), key=lambda i: dims[i])  # the thin axis of a stack
        normal = [abs(matrix.GetElement(r, sliceAxis)) for r in range(3)]
        dominant = max(range(3), key=lambda r: normal[r])  # 0 R, 1 A, 2 S
        if dominant == 1 and coronal is None:
            coronal = node
        elif dominant == 2 and axial is None:
            axial = node
    return coronal, axial


def inputFiles(inputDir, withCoronalLabels: bool, withAxialLabels: bool) -> dict:
    """Where the inputs of a run are exported (role -> path under ``inputDir``)."""
    inputDir = Path(inputDir)
    files = {"coronal": inputDir / "coronal_ceT1.nii.gz", "axial": inputDir / "axial_T2.nii.gz"}
    if withCoronalLabels:
        files["coronal_labels"] = inputDir / "coronal_labels.nii.gz"
    if withAxialLabels:
        files["axial_labels"] = inputDir / "axial_labels.nii.gz"
    return files


def exportInputs(files, coronalVolume, axialVolume, coronalLabels=None, axialLabels=None) -> dict:
    """Write the inputs to ``files`` (:func:`inputFiles`); returns the label colors by side
    ("coronal"/"axial", see :func:`writeLabels`) to name the transferred segments on import."""
    writeVolume(coronalVolume, files["coronal"])
    writeVolume(axialVolume, files["axial"])
    labelColors = {}
    if coronalLabels is not None:
        labelColors["coronal"] = writeLabels(coronalLabels, coronalVolume, files["coronal_labels"])
    if axialLabels is not None:
        labelColors["axial"] = writeLabels(axialLabels, axialVolume, files["axial_labels"])
    return labelColors


def writeVolume(volumeNode, path) -> None:
    """Write a volume to NIfTI through a private storage node, so the node's own storage
    node (and the Save dialog) is left untouched. Parent transforms are not applied: the core
    registers the volumes in their own coordinates."""
    storageNode = slicer.mrmlScene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storageNode.SetFileName(str(path))
        storageNode.UseCompressionOn()
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(_("Could not write {name} to {path}").format(name=volumeNode.GetName(), path=path))
    finally:
        storageNode.UnRegister(None)

def writeLabels(labelsNode, referenceVolume, path):
    """Write a label map volume or a segmentation to NIfTI on the reference volume's grid, in the
    reference volume's own frame (the frame it is exported in), whatever transforms exist.

    Labels count as drawn on their image: a label map volume's voxels and a segmentation's
    coordinates are taken relative to the image's own coordinates, and parent transforms of
    either node are not applied (the transform a previous run put the coronal volume under
    must not shift its labels). A label map volume on another grid is resampled onto the image
    grid (nearest neighbour, values kept). Returns what is needed to name the transferred
    segments: a color node ID, or a list of (label value, name, rgb) for a segmentation."""
    if labelsNode.IsA("vtkMRMLSegmentationNode"):
        segmentation = labelsNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        colors = []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            segment = segmentation.GetSegment(segmentId)
            segmentIds.InsertNextValue(segmentId)
            colors.append((index + 1, segment.GetName(), tuple(segment.GetColor())))
        before = nodeIDs()
        try:
            # ExportSegmentsToLabelmapNode resamples through the transform between the parents
            # of the segmentation and of the reference (GenerateMergedLabelmapInReferenceGeometry).
            # A stand-in reference with the image's grid, under the segmentation's own parent,
            # makes that transform the identity without touching the user's nodes.
            reference = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "__mmreg_reference")
            reference.CopyOrientation(referenceVolume)
            reference.SetAndObserveImageData(referenceVolume.GetImageData())
            segmentationParent = labelsNode.GetParentTransformNode()
            reference.SetAndObserveTransformNodeID(segmentationParent.GetID() if segmentationParent else None)
            labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__mmreg_export")
            ok = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                labelsNode, segmentIds, labelmapNode, reference)
            if not ok:
                raise RuntimeError(_("Could not export segmentation {name}").format(name=labelsNode.GetName()))
            writeVolume(labelmapNode, path)
        finally:
            # the stand-in reference, the temporary labelmap and the color table the export made
            removeNodesAddedSince(before)
        return {"segments": colors}
    displayNode = labelsNode.GetDisplayNode()
    colors = {"colorNodeID": displayNode.GetColorNodeID() if displayNode else None}
    labelsMatrix, referenceMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    labelsNode.GetIJKToRASMatrix(labelsMatrix)
    referenceVolume.GetIJKToRASMatrix(referenceMatrix)
    labelsShape = labelsNode.GetImageData().GetDimensions()
    referenceShape = referenceVolume.GetImageData().GetDimensions()
    labelsRows, referenceRows = rowsFromVtkMatrix(labelsMatrix), rowsFromVtkMatrix(referenceMatrix)
    if same_grid(labelsShape, labelsRows, referenceShape, referenceRows):
        writeVolume(labelsNode, path)
        return colors
    logging.info("MultimodalRegistration: %s is not on the grid of %s; resampling it (nearest neighbour)",
                 labelsNode.GetName(), referenceVolume.GetName())
    resampled = resample_labels_nearest(slicer.util.arrayFromVolume(labelsNode), labelsRows,
                                        referenceShape, referenceRows)
    before = nodeIDs()
    try:
        labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__mmreg_resampled")
        labelmapNode.CopyOrientation(referenceVolume)
        slicer.util.updateVolumeFromArray(labelmapNode, resampled)
        writeVolume(labelmapNode, path)
    finally:
        removeNodesAddedSince(before)
    return colors


def inputsKey(task) -> str:
    return "{}|{}".format(task.inputs["coronal"].GetID(), task.inputs["axial"].GetID())

def findOutputNode(role: str, key: str):
    """The node a previous run made for this role and this pair of inputs, or None."""
    for node in slicer.util.getNodesByClass("vtkMRMLNode"):
        if node.GetAttribute(ATTR_ROLE) == role and node.GetAttribute(ATTR_KEY) == key:
            return node
    return None

def outputNode(className: str, role: str, key: str, name: str):
    node = findOutputNode(role, key)
    if node is not None and not node.IsA(className):
        removeNodes(node)
        node = None
    if node is None:
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        node.SetAttribute(ATTR_ROLE, role)
        node.SetAttribute(ATTR_KEY, key)
    node.SetName(name)
    return node

def replaceWith(newNode, role: str, key: str, name: str):
    old = findOutputNode(role, key)
    if old is not None and old is not newNode:
        removeNodes(old)
    newNode.SetName(name)
    newNode.SetAttribute(ATTR_ROLE, role)
    newNode.SetAttribute(ATTR_KEY, key)
    return newNode

def loadSegmentation(path, role, key, name, referenceVolume, colors, parentTransformNode=None):
    """Load a label map file (on ``referenceVolume``'s grid) as the segmentation of ``role`` and
    put it under ``parentTransformNode``, the parent of ``referenceVolume`` after this run.

    ImportLabelmapToSegmentationNode maps the labelmap into the segmentation's own frame through
    both nodes' parent transforms ("Apply parent transforms if any" in
    vtkSlicerSegmentationsModuleLogic.cxx). The segmentation a previous run left under the result
    transform is therefore detached first (the loaded labelmap has no parent), so the labels keep
    the file's coordinates, and placed under its parent afterwards."""
    before = nodeIDs()
    segmentationNode = None
    labelmapNode = slicer.util.loadLabelVolume(str(path), properties={"show": False})
    try:
        labelmapNode.SetAndObserveTransformNodeID(None)
        colors = colors or {}
        if colors.get("segments"):
            temporaryColorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", "__mmreg_colors")
            temporaryColorNode.SetTypeToUser()
            temporaryColorNode.SetNumberOfColors(max(v for v, _n, _c in colors["segments"]) + 1)
            temporaryColorNode.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
            for value, segmentName, rgb in colors["segments"]:
                temporaryColorNode.SetColor(value, segmentName, rgb[0], rgb[1], rgb[2], 1.0)
            labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(temporaryColorNode.GetID())
        elif colors.get("colorNodeID"):
            labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(colors["colorNodeID"])
        segmentationNode = outputNode("vtkMRMLSegmentationNode", role, key, name)
        segmentationNode.SetAndObserveTransformNodeID(None)
        segmentationNode.GetSegmentation().RemoveAllSegments()
        segmentationNode.CreateDefaultDisplayNodes()
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode):
            raise OutputError(f"could not import {Path(path).name} as a segmentation")
        segmentationNode.SetAndObserveTransformNodeID(parentTransformNode.GetID() if parentTransformNode else None)
        # now under the same parent as the reference volume, so the geometry is taken as it is
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        displayNode = segmentationNode.GetDisplayNode()
        displayNode.SetVisibility2DFill(False)
        displayNode.SetVisibility2DOutline(True)
        return segmentationNode
    finally:
        # the temporary labelmap (with its display/storage nodes) and color table
        removeNodesAddedSince(before, keep=[segmentationNode])

def importResults(task) -> dict:
    """Load the outputs of a finished run into the scene, replacing those of an earlier run
    on the same inputs. Returns the nodes by role."""
    out = Path(task.outputDir)
    coronal, axial = task.inputs["coronal"], task.inputs["axial"]
    hasCoronalLabels = task.inputs.get("coronal_labels") is not None
    hasAxialLabels = task.inputs.get("axial_labels") is not None
    missing = missing_outputs(out, hasCoronalLabels, hasAxialLabels)
    if missing:
        raise OutputError(_("The registration finished but these outputs are missing: {files}").format(files=", ".join(missing)))
    result = read_transform_json(out / OUTPUT_FILES["transform_json"])
    task.result = result
    key = inputsKey(task)
    nodes = {}

    # The registration: moving (coronal) -> fixed (axial) in RAS == "transform to parent".
    transformNode = outputNode("vtkMRMLLinearTransformNode", "transform", key,
                                     f"{coronal.GetName()} to {axial.GetName()}")
    transformNode.SetMatrixTransformToParent(vtkMatrixFromRows(result["moving_to_fixed_ras"]))
    transformNode.SetAttribute(ATTR_METRICS, format_metrics(result))
    axialParent = axial.GetParentTransformNode()
    transformNode.SetAndObserveTransformNodeID(axialParent.GetID() if axialParent else None)
    previousParent = coronal.GetParentTransformNode()
    if previousParent is not None and previousParent is not transformNode:
        logging.warning("MultimodalRegistration: %s was under %s; it is now under the registration result",
                        coronal.GetName(), previousParent.GetName())
    coronal.SetAndObserveTransformNodeID(transformNode.GetID())
    nodes["transform"] = transformNode

    synth = slicer.util.loadVolume(str(out / OUTPUT_FILES["synth_t2"]), properties={"show": False})
    synth = replaceWith(synth, "synthT2", key, f"{coronal.GetName()} synthetic T2")
    synth.SetAndObserveTransformNodeID(transformNode.GetID())
    nodes["synthT2"] = synth

    if hasCoronalLabels:
        nodes["coronalLabelsOnAxial"] = loadSegmentation(
            out / OUTPUT_FILES["coronal_labels_on_axial"], "coronalLabelsOnAxial", key,
            f"{task.inputs['coronal_labels'].GetName()} on {axial.GetName()}",
            axial, task.labelColors.get("coronal"), parentTransformNode=axialParent)
    if hasAxialLabels:
        nodes["axialLabelsOnCoronal"] = loadSegmentation(
            out / OUTPUT_FILES["axial_labels_on_coronal"], "axialLabelsOnCoronal", key,
            f"{task.inputs['axial_labels'].GetName()} on {coronal.GetName()}",
            coronal, task.labelColors.get("axial"), parentTransformNode=transformNode)  # on the coronal grid

    xs, ys = subset_curve(result)
    if xs:
        import numpy as np
        table = outputNode("vtkMRMLTableNode", "mseTable", key, f"{coronal.GetName()} subset MSE")
        slicer.util.updateTableFromArray(table, np.array([xs, ys], dtype=float).T, ["subset", "MSE"])
        series = outputNode("vtkMRMLPlotSeriesNode", "mseSeries", key, "MSE per subset")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("subset")
        series.SetYColumnName("MSE")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        chart = outputNode("vtkMRMLPlotChartNode", "mseChart", key, f"{coronal.GetName()} MSE per subset")
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle("MSE per slice subset")
        chart.SetXAxisTitle("subset index")
        chart.SetYAxisTitle("MSE")
        chart.SetLegendVisibility(False)
        nodes.update(mseTable=table, mseSeries=series, mseChart=chart)
        if task.showPlot:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    # outputs an earlier run on these inputs made and this one did not (e.g. labels dropped)
    stale = [node for node in slicer.util.getNodesByClass("vtkMRMLNode")
             if node.GetAttribute(ATTR_KEY) == key and node.GetAttribute(ATTR_ROLE) not in nodes]
    removeNodes(*stale)

    if task.showResults:
        slicer.util.setSliceViewerLayers(background=axial, foreground=coronal, foregroundOpacity=0.5,
                                         label=None, fit=True)
    task.nodes = nodes
    return nodes

def vtkMatrixFromRows(rows):
    rows = check_matrix4x4(rows)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, rows[r][c])
    return matrix

def rowsFromVtkMatrix(matrix):
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
