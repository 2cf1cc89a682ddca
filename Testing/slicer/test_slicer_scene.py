"""Where the module puts labels in the scene, on the first Apply and on a second one.

Runs the module's real Logic (export -> child process -> import) against the strict stand-ins of
Testing/slicer/fake_slicer.py, whose scene models parent transforms and the segmentation logic's transform
handling as Slicer's sources do. ``PythonSlicer`` is a small script that acts as the core: it reads
the exported NIfTI inputs, writes a known registration ``T`` (moving -> fixed RAS) and the label maps
resampled through ``T``, each on the grid of the other stack, as the output contract says.

The second Apply runs with the first run's outputs in the scene and the coronal volume already
under ``T``. Checked on both runs:

* the inputs the module exports: the coronal (and axial) labels on their image's grid, in the
  image's own frame (defect 2: a segmentation used to be exported shifted by the earlier ``T``);
* the world position of the imported segmentations: "axial labels on coronal" overlays the
  registered coronal volume (coronal grid seen through ``T``), "coronal labels on axial" overlays
  the axial volume, also when the axial volume has a parent transform of its own (defect 1: the
  reused segmentation used to get the inverse of its parent transform on import).
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake PythonSlicer is a POSIX script")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_slicer

#: The registration the fake core reports: a rotation of 90 degrees about S and a shift, so a label
#: put through the transform in the wrong direction, or twice, or not at all lands elsewhere.
T = np.array([[0.0, -1.0, 0.0, 3.0],
              [1.0, 0.0, 0.0, -2.0],
              [0.0, 0.0, 1.0, 1.0],
              [0.0, 0.0, 0.0, 1.0]])
#: A parent transform the user gave the axial volume (only in the tests that say so).
P_AXIAL = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 0.0, 1.0]])

# coronal stack: i -> R (1 mm), j -> S (1 mm), k -> A (3 mm); axial: i -> R, j -> A (1 mm), k -> S (3 mm)
COR_IJK_TO_RAS = np.array([[1.0, 0, 0, -8], [0, 0, 3.0, -6], [0, 1.0, 0, -8], [0, 0, 0, 1]])
AX_IJK_TO_RAS = np.array([[1.0, 0, 0, -8], [0, 1.0, 0, -8], [0, 0, 3.0, -6], [0, 0, 0, 1]])
DIMS = (16, 16, 5)  # i, j, k of both stacks
SHAPE_KJI = DIMS[::-1]

FAKE_CORE = textwrap.dedent('''\
    #!{python}
    import json, os, shutil, sys
    import nibabel as nib
    import numpy as np
    from MultimodalRegistrationSlicerLib.labelmaps import resample_labels_nearest
    args = sys.argv[1:]
    arg = lambda name: args[args.index(name) + 1] if name in args else None
    out = arg("--out")
    T = np.array({T})
    shutil.copytree(os.path.dirname(arg("--coronal")), os.path.join(out, "seen_inputs"))
    cor, ax = nib.load(arg("--coronal")), nib.load(arg("--axial"))
    def kji(img):
        return np.asarray(img.dataobj).transpose(2, 1, 0)
    def save(array_kji, affine, name):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array_kji.transpose(2, 1, 0)).astype(np.int16), affine),
                 os.path.join(out, name))
    if arg("--coronal-labels"):
        lab = nib.load(arg("--coronal-labels"))
        # coronal labels in the axial world are at T @ their coronal position
        save(resample_labels_nearest(kji(lab), T @ lab.affine, ax.shape, ax.affine), ax.affine,
             "coronal_labels_on_axial.nii.gz")
    if arg("--axial-labels"):
        lab = nib.load(arg("--axial-labels"))
        save(resample_labels_nearest(kji(lab), np.linalg.inv(T) @ lab.affine, cor.shape, cor.affine), cor.affine,
             "axial_labels_on_coronal.nii.gz")
    shutil.copy(arg("--coronal"), os.path.join(out, "coronal_synthT2.nii.gz"))
    with open(os.path.join(out, "transform.json"), "w") as f:
        json.dump({{"moving_to_fixed_ras": T.tolist(), "method": "paper", "metric": 0.1, "seconds": 1.0,
                   "success": True, "subset_index": 1, "subset_metrics": [0.3, 0.1, 0.2]}}, f)
''')


@pytest.fixture()
def module(monkeypatch, tmp_path):
    from fake_slicer import install, load_module, put_fake_pythonslicer_on_path

    install(monkeypatch)
    put_fake_pythonslicer_on_path(monkeypatch, tmp_path, FAKE_CORE.format(python=sys.executable, T=T.tolist()))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the module's child_environment provides it
    return load_module()


def _block(value, i, j, k):
    a = np.zeros(SHAPE_KJI, np.int16)
    a[k[0]:k[1], j[0]:j[1], i[0]:i[1]] = value
    return a


COR_LABELS = _block(1, (3, 8), (4, 9), (1, 3)) + _block(2, (9, 12), (9, 13), (3, 5))
AX_LABELS = _block(5, (5, 10), (2, 7), (1, 4))


def _segmentation(scene, name, labels_kji, ijk_to_ras):
    """A user's segmentation drawn on a grid (one segment per label value)."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    for value in sorted(set(np.unique(labels_kji).tolist()) - {0}):
        segment = sys.modules["fake_slicer"].vtkSegment()
        segment.SetName(f"{name}_{value}")
        segment.SetColor(0.1 * value, 0.5, 0.9)
        segment._mask = labels_kji == value
        segment._ijkToRas = np.array(ijk_to_ras, dtype=float)
        node.GetSegmentation().AddSegment(segment)
    assert slicer.mrmlScene is scene
    return node


def _scene(kind, axial_parent=False):
    import slicer
    import vtk

    scene = slicer.mrmlScene
    rng = np.random.default_rng(0)
    cor = scene._volume("vtkMRMLScalarVolumeNode", "cor", rng.random(SHAPE_KJI).astype(np.float32), COR_IJK_TO_RAS)
    ax = scene._volume("vtkMRMLScalarVolumeNode", "ax", rng.random(SHAPE_KJI).astype(np.float32), AX_IJK_TO_RAS)
    if kind == "segmentation":
        cor_labels = _segmentation(scene, "corseg", COR_LABELS, COR_IJK_TO_RAS)
        ax_labels = _segmentation(scene, "axseg", AX_LABELS, AX_IJK_TO_RAS)
    else:
        cor_labels = scene._volume("vtkMRMLLabelMapVolumeNode", "corlab", COR_LABELS, COR_IJK_TO_RAS)
        ax_labels = scene._volume("vtkMRMLLabelMapVolumeNode", "axlab", AX_LABELS, AX_IJK_TO_RAS)
    if axial_parent:
        parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "user transform")
        m = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                m.SetElement(r, c, P_AXIAL[r, c])
        parent.SetMatrixTransformToParent(m)
        ax.SetAndObserveTransformNodeID(parent.GetID())
        if kind == "segmentation":
            ax_labels.SetAndObserveTransformNodeID(parent.GetID())  # drawn on the transformed axial volume
    return cor, ax, cor_labels, ax_labels


def _world_labels(segmentation_node, grid_ijk_to_world, dims=DIMS):
    """The segmentation's label (1 + segment index, 0 outside) at the voxel centres of a grid given
    in world RAS: where the segments are in the world, whatever frames and parents they have."""
    from fake_slicer import _grid_points, _lookup, _to_world

    points = np.linalg.inv(_to_world(segmentation_node)) @ _grid_points(grid_ijk_to_world, dims)
    seg = segmentation_node.GetSegmentation()
    out = np.zeros(points.shape[1], np.int16)
    for index in range(seg.GetNumberOfSegments()):
        segment = seg.GetSegment(seg.GetNthSegmentID(index))
        out[_lookup(segment._mask, segment._ijkToRas, points).astype(bool)] = segment.GetLabelValue()
    return out.reshape(SHAPE_KJI)


def _file_kji(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj).transpose(2, 1, 0), img.affine


def _apply(module, tmp_path, name, nodes):
    cor, ax, cor_labels, ax_labels = nodes
    logic = module.MultimodalRegistrationLogic()
    task = logic.process(cor, ax, coronalLabels=cor_labels, axialLabels=ax_labels, workDir=tmp_path / name,
                         timeoutSeconds=60, showResults=True)
    assert task.status == "completed", task.error
    return task


def _check_run(task, nodes, axial_parent):
    import slicer

    cor, ax, _cl, _al = nodes
    out = task.outputDir
    # the exported inputs: labels on their image's grid, in the image's own frame
    exported_cor, affine = _file_kji(out / "seen_inputs" / "coronal_labels.nii.gz")
    assert np.allclose(affine, COR_IJK_TO_RAS)
    assert np.array_equal(exported_cor > 0, COR_LABELS > 0), "coronal labels exported off their image"
    exported_ax, affine = _file_kji(out / "seen_inputs" / "axial_labels.nii.gz")
    assert np.allclose(affine, AX_IJK_TO_RAS)
    assert np.array_equal(exported_ax > 0, AX_LABELS > 0), "axial labels exported off their image"

    transform = task.nodes["transform"]
    assert cor.GetParentTransformNode() is transform
    p = P_AXIAL if axial_parent else np.eye(4)
    from fake_slicer import _to_world

    assert np.allclose(_to_world(cor), p @ T)
    # "axial labels on coronal" overlays the registered coronal volume: the coronal grid through T
    on_coronal, _aff = _file_kji(out / "axial_labels_on_coronal.nii.gz")
    assert on_coronal.any()
    seg = task.nodes["axialLabelsOnCoronal"]
    assert seg.GetParentTransformNode() is transform
    assert np.array_equal(_world_labels(seg, p @ T @ COR_IJK_TO_RAS) > 0, on_coronal > 0), \
        "axial labels on coronal are not where the registered coronal volume is"
    # "coronal labels on axial" overlays the axial volume (under its own parent, if any)
    on_axial, _aff = _file_kji(out / "coronal_labels_on_axial.nii.gz")
    assert on_axial.any()
    seg = task.nodes["coronalLabelsOnAxial"]
    assert (seg.GetParentTransformNode() is ax.GetParentTransformNode())
    assert np.array_equal(_world_labels(seg, p @ AX_IJK_TO_RAS) > 0, on_axial > 0), \
        "coronal labels on axial are not where the axial volume is"
    assert slicer._sliceLayers["background"] is ax
    return exported_cor, exported_ax, on_coronal, on_axial


@pytest.mark.parametrize("axial_parent", [False, True], ids=["axial-at-root", "axial-under-a-transform"])
@pytest.mark.parametrize("kind", ["segmentation", "labelmap"])
def test_second_apply_puts_labels_where_the_first_did(module, tmp_path, kind, axial_parent):
    import slicer

    nodes = _scene(kind, axial_parent)
    first = _check_run(_apply(module, tmp_path, "run1", nodes), nodes, axial_parent)
    count = slicer.mrmlScene.GetNumberOfNodes()
    # second Apply: the first run's outputs are in the scene, the coronal volume is under T
    second_task = _apply(module, tmp_path, "run2", nodes)
    second = _check_run(second_task, nodes, axial_parent)
    for a, b in zip(first, second):
        assert np.array_equal(a, b), "the second run exported or imported different labels"
    assert slicer.mrmlScene.GetNumberOfNodes() == count, "the second run added nodes instead of replacing"
    names = {slicer.mrmlScene.GetNthNode(i).GetName() for i in range(slicer.mrmlScene.GetNumberOfNodes())}
    assert not any(n.startswith("__mmreg") for n in names), "temporary nodes left in the scene"


def test_a_label_map_off_its_image_grid_is_resampled_onto_it(module, tmp_path):
    import slicer

    cor, ax, _cl, _al = _scene("labelmap")
    # the same labels on a bigger grid that starts 2 voxels further left (-R) and 1 voxel lower (-S)
    big = np.zeros((SHAPE_KJI[0], SHAPE_KJI[1] + 3, SHAPE_KJI[2] + 4), np.int16)
    big[:, 1:1 + SHAPE_KJI[1], 2:2 + SHAPE_KJI[2]] = COR_LABELS
    shifted = COR_IJK_TO_RAS.copy()
    shifted[:3, 3] -= COR_IJK_TO_RAS[:3, 0] * 2 + COR_IJK_TO_RAS[:3, 1] * 1
    off_grid = slicer.mrmlScene._volume("vtkMRMLLabelMapVolumeNode", "offgrid", big, shifted)
    task = _apply(module, tmp_path, "run", (cor, ax, off_grid, None))
    exported, affine = _file_kji(task.outputDir / "seen_inputs" / "coronal_labels.nii.gz")
    assert np.allclose(affine, COR_IJK_TO_RAS)
    assert np.array_equal(exported, COR_LABELS), "label values must be kept and the grid be the image's"
    assert off_grid.GetImageData()._array.shape == big.shape, "the input node must not change"


def test_the_stand_ins_are_strict(module):
    import slicer
    import vtk

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    with pytest.raises(AttributeError):
        scene.AddNewNodeByClas("vtkMRMLScalarVolumeNode")  # misspelt
    with pytest.raises(AttributeError):
        node.SetAndObserveTransformNode(None)  # not the real name (it takes an ID)
    with pytest.raises(TypeError):
        node.SetName(name="x")  # VTK methods take no keywords
    with pytest.raises(TypeError):
        node.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode"))  # a node, not an ID
    with pytest.raises(AttributeError):
        slicer.util.loadSegmentationFile  # noqa: B018 - not in slicer.util
    with pytest.raises(AttributeError):
        slicer.pydeps  # noqa: B018 - never existed
    with pytest.raises(TypeError):
        slicer.util.loadLabelVolume("x.nii.gz", {"show": False}, False, "extra")
    with pytest.raises(AttributeError):
        vtk.vtkMatrix4x4().SetElements(0, 0, 1.0)
    assert scene.CreateNodeByClass("vtkMRMLNoSuchNode") is None
