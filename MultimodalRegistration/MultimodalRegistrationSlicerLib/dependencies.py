"""Installing the core's Python packages inside Slicer (imports slicer: runs inside Slicer only).

Pinned requirements come from ``Resources/requirements.txt`` (checked by :mod:`.requirements`);
``slicer.packaging.pip_ensure`` (Slicer >= 5.12) asks the user itself; on older Slicer
``slicer.util.pip_install`` is only called after an explicit confirmation. torch comes from the
PyTorch extension when it is installed.
"""
import logging

import slicer

from .i18n import _
from .requirements import missing_requirements, read_requirements, torch_installed


def missingRequirements(requirementsPath) -> list:
    return missing_requirements(read_requirements(requirementsPath))


def findPipEnsure():
    """``slicer.packaging.pip_ensure`` (Slicer >= 5.12), or None on older Slicer."""
    try:
        from slicer import packaging
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def ensureDependencies(requirementsPath, needTorch: bool = True) -> bool:
    """Offer to install the packages the core needs (asking first); return False if they are still missing."""
    missing = missingRequirements(requirementsPath)
    if missing:
        pipEnsure = findPipEnsure()
        if pipEnsure is not None:
            try:
                from packaging.requirements import Requirement
                pipEnsure([Requirement(r) for r in missing], requester="MultimodalRegistration")
            except RuntimeError as exc:  # the user declined
                logging.info("MultimodalRegistration: installation declined: %s", exc)
                return False
        else:
            if not slicer.util.confirmOkCancelDisplay(
                    _("Multimodal Registration needs these Python packages:\n\n{packages}\n\n"
                      "Install them now? This may take a few minutes.").format(packages="\n".join(missing)),
                    windowTitle=_("Install Python packages")):
                return False
            for requirement in missing:
                slicer.util.pip_install(requirement)
        missing = missingRequirements(requirementsPath)
        if missing:
            if slicer.app.testingEnabled():
                logging.warning("MultimodalRegistration: missing in testing mode: %s", missing)
            else:
                slicer.util.errorDisplay(_("Still missing: {packages}").format(packages=", ".join(missing)))
                return False
    if needTorch and not torch_installed():
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
            if torch is None:
                return False
        else:
            if not slicer.util.confirmOkCancelDisplay(
                    _("Multimodal Registration needs PyTorch (translator and registration), and the PyTorch "
                      "extension is not installed.\n\nInstall PyTorch with pip now (default build)? You can "
                      "also cancel and install the 'PyTorch' extension from the Extensions Manager, which "
                      "picks the CUDA or CPU build that fits this computer."),
                    windowTitle=_("Install PyTorch")):
                return False
            slicer.util.pip_install("torch")
        if not torch_installed():
            return False
    return True


def installTestDependencies(requirementsPath) -> list:
    """Install what the core needs into a test Slicer without asking, saying so in the log; returns
    what is still missing. In testing mode ``pip_ensure`` installs nothing, so the self-test uses this."""
    for requirement in missingRequirements(requirementsPath):
        logging.info("MultimodalRegistration self-test: installing %s", requirement)
        slicer.util.pip_install(requirement)
    if not torch_installed():
        logging.info("MultimodalRegistration self-test: installing PyTorch")
        try:
            import PyTorchUtils
            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        except ImportError:
            slicer.util.pip_install("torch")
    return missingRequirements(requirementsPath)
