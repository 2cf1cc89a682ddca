"""One run of the core as the module's Logic sees it (Slicer-free, standard library only)."""
import time

from .process import ProgressTracker


class RegistrationTask:
    """One run of the core: inputs, child process, progress, and (when completed) result nodes."""

    def __init__(self):
        self.status = "running"  # running | completed | failed | cancelled
        self.error = ""
        self.log = []
        self.result = None
        self.nodes = {}
        self.process = None
        self.timer = None
        self.tracker = ProgressTracker()
        self.startTime = time.time()
        self.elapsed = 0.0
        self.workDir = None
        self.inputDir = None
        self.outputDir = None
        self.keepIntermediateFiles = False
        self.inputs = {}
        self.labelColors = {}
        self.showResults = True
        self.showPlot = False
        self.progressCallback = None
        self.completedCallback = None

    @property
    def running(self) -> bool:
        return self.status == "running"
