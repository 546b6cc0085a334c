"""Python packages inside Slicer: torch through the PyTorch extension (PyTorchUtils), the others from
``Resources/requirements.txt``, installed at first use after the user agreed; never at import or
start-up, and never a torch from PyPI (pip is told to leave torch alone).

numpy and scipy come with Slicer. The Slicer-facing functions take the ``slicer`` and
``PyTorchUtils`` modules as optional arguments so that they can be tested without Slicer.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
MINIMUM_TORCH = ">=2.1"
#: Never installed or replaced by pip from here: torch comes from the PyTorch extension, the others
#: are Slicer's own.
PROTECTED = ("torch", "SimpleITK", "requests", "numpy")
REQUESTER = "LCKDSegmentation"


def requirements(path: Path = REQUIREMENTS) -> List[str]:
    """The requirement lines of ``requirements.txt`` (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def requirementName(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0]


def _satisfied(line: str) -> bool:
    try:
        installed = metadata.version(requirementName(line))
    except metadata.PackageNotFoundError:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no version check without packaging; presence is enough
        return True
    return Requirement(line).specifier.contains(installed, prereleases=True)


def missingRequirements(path: Path = REQUIREMENTS) -> List[str]:
    """Requirement lines that are not installed, or installed in a version outside their bounds."""
    return [line for line in requirements(path) if not _satisfied(line)]


def installedVersions(path: Path = REQUIREMENTS) -> Dict[str, str]:
    """Installed version of torch, numpy, scipy and of each requirement (for support requests)."""
    versions = {}
    for name in ["torch", "numpy", "scipy"] + [requirementName(line) for line in requirements(path)]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def versionsText(path: Path = REQUIREMENTS) -> str:
    return "\n".join(f"{name}: {version}" for name, version in installedVersions(path).items())


def _torchConstraints() -> Optional[Path]:
    """A pip constraints file pinning the installed torch (so pip cannot replace it), or None."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    handle, name = tempfile.mkstemp(prefix="LCKDSegmentation-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write(f"torch=={version}\n")
    return Path(name)


def ensureTorch(askConfirmation: bool = True, torchUtils=None) -> bool:
    """torch through the PyTorch extension; True when it is available."""
    if torchUtils is None:
        import PyTorchUtils as torchUtils  # the PyTorch extension (EXTENSION_DEPENDS)

    logic = torchUtils.PyTorchUtilsLogic()
    return logic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=MINIMUM_TORCH) is not None


def ensureDependencies(askConfirmation: bool = True, reinstall: bool = False, slicerModule=None,
                       torchUtils=None, path: Path = REQUIREMENTS) -> bool:
    """Inside Slicer: torch via PyTorchUtils, then the requirements via pip. True when ready.

    With ``reinstall``, the requirements are reinstalled (``--force-reinstall --no-deps``, so their
    dependencies such as torch stay as they are), then anything still missing is installed.
    """
    if slicerModule is None:
        import slicer as slicerModule

    if not ensureTorch(askConfirmation, torchUtils):
        return False
    needed = requirements(path) if reinstall else missingRequirements(path)
    if not needed:
        return True
    util = slicerModule.util
    if askConfirmation and not util.confirmOkCancelDisplay(
            "LCKDSegmentation needs these Python packages; install them now into Slicer's Python?\n\n"
            + "\n".join(needed), "LCKDSegmentation"):
        return False
    constraints = _torchConstraints()
    try:
        constraintArguments = ["-c", str(constraints)] if constraints else []
        if reinstall:
            util.pip_install(["--force-reinstall", "--no-deps"] + constraintArguments + needed)
            needed = missingRequirements(path)
            if not needed:
                return True
        packaging = getattr(slicerModule, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.11
            loaded = packaging.load_requirements(path) if hasattr(packaging, "load_requirements") else needed
            options = dict(constraints=constraints, skip_packages=list(PROTECTED), prompt_install=False,
                           requester=REQUESTER)
            try:
                accepted = inspect.signature(packaging.pip_ensure).parameters
            except (TypeError, ValueError):
                accepted = {}
            if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
                options = {key: value for key, value in options.items() if key in accepted}
            packaging.pip_ensure(loaded, **options)
        else:
            util.pip_install(constraintArguments + needed)
    finally:
        if constraints is not None:
            constraints.unlink()
    return not missingRequirements(path)
