"""Python packages inside Slicer: torch through the PyTorch extension, the rest from requirements.txt,
installed at first use after the user agreed (never at import or start-up)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Dict, List

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
MINIMUM_TORCH = ">=2.1"


def requirements(path: Path = REQUIREMENTS) -> List[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def missingRequirements(path: Path = REQUIREMENTS) -> List[str]:
    """Requirement lines whose distribution is not installed (versions are left to pip)."""
    missing = []
    for line in requirements(path):
        name = line.split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(line)
    return missing


def installedVersions(path: Path = REQUIREMENTS) -> Dict[str, str]:
    """Installed version of torch and of each requirement (for support requests)."""
    versions = {}
    for line in ["torch"] + requirements(path):
        name = line.split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def ensureDependencies(askConfirmation: bool = True, reinstall: bool = False) -> bool:
    """Inside Slicer: torch via PyTorchUtils, then the requirements via pip. Returns True when ready."""
    import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
    import slicer

    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=MINIMUM_TORCH) is None:
        return False
    needed = requirements() if reinstall else missingRequirements()
    if not needed:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "LCKDSegmentation needs these Python packages, which will be installed now:\n" + "\n".join(needed)):
        return False
    if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer >= 5.11
        slicer.packaging.pip_ensure(needed)
    else:
        slicer.util.pip_install(needed)
    return True
