"""Python packages inside Slicer: torch through the PyTorch extension (PyTorchUtils), the others from
``Resources/requirements.txt``, installed at first use after the user agreed; never at import or
start-up, and never a torch from PyPI.

* torch: the installed distribution's version is read with ``importlib.metadata`` (torch is never
  imported into the application); ``PyTorchUtilsLogic.installTorch`` runs only when torch is
  missing or older than :data:`MINIMUM_TORCH`, because it installs (and prompts) on every call.
* The requirements: ``slicer.packaging.pip_ensure`` where it exists (Slicer >= 5.12; the submodule
  is imported explicitly, Slicer does not import it), ``slicer.util.pip_install`` before. pip
  resolves every dependency normally; a constraints file pins the installed torch, numpy,
  SimpleITK and requests, so that pip refuses instead of replacing them.
* After installing, the ``PythonSlicer`` interpreter that runs the segmenter imports every
  requirement and checks its dependencies (:func:`verifyEnvironment`); a failure is an error.
* Under ``--testing`` (the in-Slicer self-test) nothing is asked: what is missing is installed,
  and that is logged; with everything present the step only logs that it had nothing to do.

numpy and scipy come with Slicer. The Slicer-facing functions take the ``slicer`` and
``PyTorchUtils`` modules as optional arguments so that they can be tested without Slicer.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .i18n import translator

_ = translator(__file__)

REQUIREMENTS = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
LIBRARY_FOLDER = REQUIREMENTS.parent.parent
MINIMUM_TORCH = ">=2.1"
#: Never installed or replaced by pip from here: torch comes from the PyTorch extension, the others
#: are Slicer's own. Their installed versions are pinned by a constraints file during installs.
PROTECTED = ("torch", "SimpleITK", "requests", "numpy")
REQUESTER = "LCKDSegmentation"


class DependencyError(RuntimeError):
    """The packages could not be installed, or do not work in the segmenter's interpreter."""


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


def _release(version: str) -> tuple:
    """The numeric release of a version string (``2.13.0+cpu`` -> (2, 13, 0))."""
    parts = []
    for part in re.split(r"[.+-]", version):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def versionSatisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` (such as ``>=2.1``); without the ``packaging`` package
    only ``>=`` bounds are understood (the only kind the requirements use)."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        bounds = [clause.strip() for clause in specifier.split(",") if clause.strip()]
        return all(_release(version) >= _release(bound[2:]) for bound in bounds if bound.startswith(">="))
    return SpecifierSet(specifier).contains(version, prereleases=True)


def installedVersion(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(line: str) -> bool:
    installed = installedVersion(requirementName(line))
    if installed is None:
        return False
    specifier = line.strip()[len(requirementName(line)):].split(";", 1)[0].strip()
    return not specifier or versionSatisfies(installed, specifier)


def missingRequirements(path: Path = REQUIREMENTS) -> List[str]:
    """Requirement lines that are not installed, or installed in a version outside their bounds."""
    importlib.invalidate_caches()
    return [line for line in requirements(path) if not _satisfied(line)]


def installedVersions(path: Path = REQUIREMENTS) -> Dict[str, str]:
    """Installed version of torch, numpy, scipy and of each requirement (for support requests)."""
    names = ["torch", "numpy", "scipy"] + [requirementName(line) for line in requirements(path)]
    return {name: installedVersion(name) or "not installed" for name in names}


def versionsText(path: Path = REQUIREMENTS) -> str:
    return "\n".join(f"{name}: {version}" for name, version in installedVersions(path).items())


def isTesting(slicerModule) -> bool:
    """Whether Slicer runs with ``--testing`` (its self-tests)."""
    app = getattr(slicerModule, "app", None)
    testingEnabled = getattr(app, "testingEnabled", None)
    return bool(testingEnabled()) if callable(testingEnabled) else False


def slicerPackaging(slicerModule):
    """``slicer.packaging`` (Slicer >= 5.12), imported explicitly; None on older Slicer."""
    try:
        importlib.import_module(slicerModule.__name__ + ".packaging")
    except ImportError:
        return None
    packaging = getattr(slicerModule, "packaging", None)
    return packaging if hasattr(packaging, "pip_ensure") else None


def ensureTorch(askConfirmation: bool = True, torchUtils=None, requirement: str = MINIMUM_TORCH) -> bool:
    """torch through the PyTorch extension; True when an installed torch meets ``requirement``.

    The installed version is read from the package metadata, so torch is not imported here.
    PyTorchUtils is asked to install only when torch is missing or too old.
    """
    installed = installedVersion("torch")
    if installed is not None and versionSatisfies(installed, requirement):
        return True
    logging.info(f"LCKDSegmentation: torch {installed or 'is not installed'}; PyTorch{requirement} needed")
    if torchUtils is None:
        import PyTorchUtils as torchUtils  # the PyTorch extension (EXTENSION_DEPENDS)

    logic = torchUtils.PyTorchUtilsLogic()
    if logic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=requirement) is None:
        logging.info("LCKDSegmentation: PyTorch was not installed")
        return False
    importlib.invalidate_caches()
    installed = installedVersion("torch")
    return installed is not None and versionSatisfies(installed, requirement)


def _protectedConstraints() -> Path:
    """A pip constraints file pinning the installed versions of :data:`PROTECTED` packages."""
    pins = [f"{name}=={version}" for name, version in ((n, installedVersion(n)) for n in PROTECTED) if version]
    handle, name = tempfile.mkstemp(prefix="LCKDSegmentation-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as out:
        out.write("".join(f"{pin}\n" for pin in pins))
    return Path(name)


def _install(slicerModule, needed: List[str], reinstall: bool, path: Path) -> None:
    """Install ``needed`` (and their dependencies) with Slicer's pip helpers, protected packages pinned."""
    constraints = _protectedConstraints()
    try:
        if reinstall:  # the requirements themselves afresh; their dependencies stay as they are
            slicerModule.util.pip_install(["--force-reinstall", "--no-deps", "-c", str(constraints)] + needed)
            needed = missingRequirements(path)
            if not needed:
                return
        packaging = slicerPackaging(slicerModule)
        if packaging is not None:
            # we asked the user ourselves; in testing mode the self-test needs the packages installed
            packaging.pip_ensure(needed, constraints=str(constraints), prompt_install=False, requester=REQUESTER,
                                 skip_in_testing=False)
        else:
            slicerModule.util.pip_install(["-c", str(constraints)] + needed)
    finally:
        constraints.unlink()


_VERIFY_SCRIPT = r"""
import importlib, json, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
problems, seen = [], set()

def name_of(line):
    return re.split(r"[\s<>=!~;\[(]", line.strip(), maxsplit=1)[0]

def check(line, needed_by):
    if Requirement is not None:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            return
        name, specifier = requirement.name, requirement.specifier
    else:
        if ";" in line:
            return
        name, specifier = name_of(line), None
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        problems.append(f"{name} is not installed" + (f" (needed by {needed_by})" if needed_by else ""))
        return
    if specifier is not None and not specifier.contains(installed, prereleases=True):
        problems.append(f"{name} {installed} does not meet {line}" + (f" (needed by {needed_by})" if needed_by else ""))
    for dependency in metadata.requires(name) or []:
        check(dependency, name)

def modules_of(name):
    top = metadata.distribution(name).read_text("top_level.txt")
    found = [line.strip() for line in (top or "").splitlines() if line.strip() and not line.startswith("_")]
    return found or [name.replace("-", "_")]

for line in sys.argv[1:]:
    check(line, None)
for line in sys.argv[1:]:
    try:
        modules = modules_of(name_of(line))
    except metadata.PackageNotFoundError:
        continue
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:
            problems.append(f"import {module} fails: {type(error).__name__}: {error}")
print(json.dumps(problems))
"""


def verifyEnvironment(lines: Sequence[str], python: Optional[str] = None,
                      libraryFolder: Path = LIBRARY_FOLDER, timeout: float = 600.0) -> List[str]:
    """Problems of ``lines`` (requirements) in the interpreter that runs the segmenter.

    Each requirement and, recursively, its declared dependencies must be installed in versions that
    meet their bounds, and each requirement's modules must import. Empty when all is well.
    """
    from .segmenterProcess import pythonExecutable

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(libraryFolder), env.get("PYTHONPATH")]))
    completed = subprocess.run([python or pythonExecutable(), "-c", _VERIFY_SCRIPT, *lines], capture_output=True,
                               text=True, env=env, cwd=str(libraryFolder), timeout=timeout)
    try:
        return list(json.loads(completed.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        tail = (completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"])[-1]
        return [f"the check could not run: {tail}"]


def ensureDependencies(askConfirmation: bool = True, reinstall: bool = False, slicerModule=None,
                       torchUtils=None, path: Path = REQUIREMENTS, python: Optional[str] = None) -> bool:
    """Inside Slicer: torch via PyTorchUtils, then the requirements via pip. True when ready, False when
    the user declined; raises DependencyError when an installation left something that does not work.

    With ``reinstall``, the requirements are reinstalled (``--force-reinstall --no-deps``, so their
    dependencies such as torch stay as they are), then anything still missing is installed.
    """
    if slicerModule is None:
        import slicer as slicerModule

    testing = isTesting(slicerModule)
    if not ensureTorch(askConfirmation and not testing, torchUtils):
        return False
    needed = requirements(path) if reinstall else missingRequirements(path)
    if not needed:
        if testing:
            logging.info("LCKDSegmentation: testing mode; the Python packages are installed, nothing to do")
        return True
    if testing:
        logging.info(f"LCKDSegmentation: testing mode; installing without asking: {', '.join(needed)}")
    elif askConfirmation and not slicerModule.util.confirmOkCancelDisplay(
            _("LCKDSegmentation needs these Python packages; install them now into Slicer's Python?")
            + "\n\n" + "\n".join(needed), "LCKDSegmentation"):
        return False
    _install(slicerModule, needed, reinstall, path)
    problems = missingRequirements(path) or verifyEnvironment(requirements(path), python=python)
    if problems:
        raise DependencyError(_("The Python packages do not work after installing: {problems}").format(
            problems="; ".join(problems)))
    logging.info(f"LCKDSegmentation: installed and checked {', '.join(needed)}")
    return True
