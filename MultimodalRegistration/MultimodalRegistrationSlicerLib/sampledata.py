"""The bundled sample case in Slicer's Sample Data module (imports SampleData: runs inside Slicer only)."""
import logging
import os
from pathlib import Path

from MultimodalRegistrationLib.contract import SAMPLE_DATA_FOLDER, SAMPLE_GROUND_TRUTH, SAMPLE_VOLUME_FILES

#: The module folder (``MultimodalRegistration/``), where Resources/ is.
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Name of the sample case in the Sample Data module.
SAMPLE_CATEGORY = "Multimodal Registration"
SAMPLE_NAME = "MultimodalRegistrationSample"
SAMPLE_NODE_NAMES = {
    "coronal": "sample_coronal_ceT1",
    "axial": "sample_axial_T2",
    "coronal_labels": "sample_coronal_labels",
    "axial_labels": "sample_axial_labels",
}


def sampleDataPaths(moduleDir=MODULE_DIR):
    """Paths of the bundled sample case (role -> path), and of its ground truth."""
    folder = os.path.join(moduleDir, *SAMPLE_DATA_FOLDER)
    paths = {role: os.path.join(folder, name) for role, name in SAMPLE_VOLUME_FILES.items()}
    return paths, os.path.join(folder, SAMPLE_GROUND_TRUTH)


def _sha256(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def registerSampleData():
    """Add the bundled sample case to the Sample Data module (local files, no download)."""
    import inspect

    import SampleData

    paths, _groundTruth = sampleDataPaths()
    roles = ("coronal", "axial", "coronal_labels", "axial_labels")
    missing = [paths[r] for r in roles if not os.path.isfile(paths[r])]
    if missing:
        logging.warning("MultimodalRegistration: sample data not found: %s", ", ".join(missing))
        return
    kwargs = dict(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "MultimodalRegistration.png"),
        uris=[Path(paths[r]).as_uri() for r in roles],
        fileNames=[SAMPLE_VOLUME_FILES[r] for r in roles],
        nodeNames=[SAMPLE_NODE_NAMES[r] for r in roles],
        loadFiles=[True, True, True, True],
        # the Sample Data cache keeps a copy; the checksum makes it refresh when the files change
        checksums=["SHA256:" + _sha256(paths[r]) for r in roles],
    )
    fileTypes = ["VolumeFile", "VolumeFile", "SegmentationFile", "SegmentationFile"]
    signature = inspect.signature(SampleData.SampleDataLogic.registerCustomSampleDataSource).parameters
    kwargs["loadFileTypes" if "loadFileTypes" in signature else "loadFileType"] = fileTypes
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**kwargs)
