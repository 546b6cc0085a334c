"""Shared fixtures: a `tiny` model file and small synthetic volumes written as real NIfTI files."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict

import nibabel as nib
import numpy as np
import pytest
import torch

from lckd.model_file import ModelCard, save_model
from lckd.network import PRESETS, LCKDNet

# Two workers share the 2-core CI machine: one torch thread each (and one ITK thread for the
# registrations of --preprocess, read when SimpleITK loads) keeps them from fighting.
TEST_THREADS = int(os.environ.get("LCKD_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(TEST_THREADS))

TINY_TILE = [32, 64, 64]


def make_tiny_model_file(path: Path, seed: int = 0, spacing_mm=(2.0, 2.0, 2.0), **card_fields) -> Path:
    """Save a randomly initialised `tiny` network as a model file."""
    torch.manual_seed(seed)
    model = LCKDNet(PRESETS["tiny"])
    card = ModelCard(preset="tiny", network=model.config.to_dict(), tile_size=list(TINY_TILE),
                     spacing_mm=list(spacing_mm), name="tiny-test", **card_fields)
    return save_model(path, model, card)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """`lckd segment --threads N` run in a test's process sets torch's thread count for the whole
    worker; give the next test the worker's one thread back."""
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors")


#: The bundled phantom-trained demo model: it finds the phantom's tumour, so its label maps hold every region.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "LCKDSegmentation" / "Resources" / "Models" / \
    "lckd-phantom-demo.safetensors"


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory):
    """A phantom case (3 mm) as a DICOM study (four sequences, a localiser, a reformat; PACS-export layout),
    with the same images as NIfTI files (``nifti``: {sequence: path}) and the case (``case``)."""
    from dicom_studies import write_study

    from lckd.io import save_nifti
    from lckd.phantom.generator import make_case

    folder = tmp_path_factory.mktemp("phantom_study")
    case = make_case(0, spacing=3.0)
    study = write_study(folder / "study", case.images, case.affine)
    nifti = {name: save_nifti(folder / "nifti" / f"{name}.nii.gz", image, case.affine)
             for name, image in case.images.items()}
    return SimpleNamespace(study=study, folder=study.folder, nifti=nifti, case=case)


def world_blob(world: np.ndarray, centre, radius: float) -> np.ndarray:
    """Smooth ball intensity at world points ``(..., 3)`` (1 inside, falling off over ~2 mm)."""
    distance = np.linalg.norm(world - np.asarray(centre, dtype=float), axis=-1)
    return 1.0 / (1.0 + np.exp((distance - radius) / 1.0))


def world_coordinates(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def synthetic_head(shape, affine, seed: int = 0, blob_centre=(10.0, -5.0, 8.0)) -> np.ndarray:
    """A 'head' in world space: a brain ellipsoid (zero outside) with a bright lesion blob."""
    world = world_coordinates(shape, affine)
    brain = ((world / np.array([45.0, 55.0, 40.0])) ** 2).sum(axis=-1) < 1.0
    rng = np.random.default_rng(seed)
    image = (100.0 + 400.0 * world_blob(world, blob_centre, 8.0) + rng.normal(0, 5, shape)) * brain
    return image.astype(np.float32)


@pytest.fixture
def write_case(tmp_path) -> Callable[..., Dict[str, Path]]:
    """Write NIfTI files for the given sequences on one grid; returns {sequence: path}."""

    def write(sequences=("flair", "t1", "t1ce", "t2"), shape=(50, 56, 44), affine=None, folder=None, seed=0):
        affine = np.array(affine if affine is not None else
                          [[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])
        folder = Path(folder or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for index, name in enumerate(sequences):
            data = synthetic_head(shape, affine, seed=seed + index)
            paths[name] = folder / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), str(paths[name]))
        return paths

    return write


# -- stand-ins for what only the Slicer application has ---------------------------------------------
# They do what the real code does (read from Slicer's Base/Python/slicer/util.py and packaging.py and
# from SlicerPyTorch's PyTorchUtils/PyTorchUtils.py), including what is unkind to an extension:
# installTorch always installs and asks, slicer.packaging exists only once imported (Slicer 5.12+),
# pip_ensure skips its work under --testing unless told otherwise, skip_packages installs with
# --no-deps. "Installing" writes real distributions (dist-info + module) into a folder on sys.path.

PACKAGING_STAND_IN = '''"""Stand-in for Slicer 5.12's slicer.packaging (see Testing/conftest.py)."""
import conftest

_stand_in = conftest.SlicerStandIn.active
pip_ensure = _stand_in.pip_ensure
pip_install = _stand_in.packaging_pip_install
load_requirements = _stand_in.load_requirements
'''


class PackageIndexStandIn:
    """A tiny package index: ``{name: (version, [dependency lines], import error or None)}``; installing
    writes ``NAME-VERSION.dist-info`` and a module into ``site`` (which the tests put on sys.path)."""

    def __init__(self, site: Path, packages: Dict[str, tuple]):
        self.site = Path(site)
        self.site.mkdir(parents=True, exist_ok=True)
        self.packages = packages

    def install(self, name: str, no_deps: bool) -> None:
        import re

        name = re.split(r"[\s<>=!~;\[]", name, maxsplit=1)[0]
        if name not in self.packages:
            if importlib.util.find_spec(name.replace("-", "_")) is not None:
                return  # a real package of this environment: already there
            raise RuntimeError(f"ERROR: No matching distribution found for {name}")
        version, dependencies, import_error = self.packages[name]
        module = name.replace("-", "_")
        info = self.site / f"{module}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        lines = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
        lines += [f"Requires-Dist: {dependency}\n" for dependency in dependencies]
        (info / "METADATA").write_text("".join(lines))
        (info / "top_level.txt").write_text(module + "\n")
        body = f"raise ImportError({import_error!r})\n" if import_error else ""
        body += "".join(f"import {d.split('>')[0].split('=')[0].strip().replace('-', '_')}\n" for d in dependencies)
        (self.site / f"{module}.py").write_text(body)
        if not no_deps:
            for dependency in dependencies:
                self.install(dependency, no_deps=False)


class SlicerStandIn:
    """The parts of Slicer (``slicer.util`` pip and dialogs, ``slicer.app`` testing mode, Slicer 5.12's
    ``slicer.packaging``) and of the PyTorch extension that the dependency code uses; records events."""

    active = None

    def __init__(self, monkeypatch, folder: Path, version: tuple = (5, 8), testing: bool = False, agree: bool = True,
                 index: PackageIndexStandIn = None):
        import slicer

        self.slicer, self.version, self.testing, self.agree, self.index = slicer, version, testing, agree, index
        self.events = []
        SlicerStandIn.active = self
        monkeypatch.setattr(slicer, "app", SimpleNamespace(
            testingEnabled=lambda: self.testing,
            commandOptions=lambda: SimpleNamespace(testingEnabled=self.testing)), raising=False)
        monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", self.confirm)
        monkeypatch.setattr(slicer.util, "pip_install", self.util_pip_install if version < (5, 12)
                            else self.packaging_pip_install)
        monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
        monkeypatch.delattr(slicer, "packaging", raising=False)
        if version >= (5, 12):  # a real submodule file, imported only when someone imports it
            package = Path(folder) / "slicer-5.12" / "slicer"
            package.mkdir(parents=True, exist_ok=True)
            (package / "packaging.py").write_text(PACKAGING_STAND_IN)
            monkeypatch.setattr(slicer, "__path__", [*slicer.__path__, str(package)])
        self.torchUtils = SimpleNamespace(PyTorchUtilsLogic=lambda: PyTorchUtilsLogicStandIn(self))

    def confirm(self, text, windowTitle=None, **kwargs):  # noqa: N803  (Slicer's API)
        self.events.append(("confirm", text))
        return self.agree

    def _run_pip(self, arguments):
        self.events.append(("pip", list(arguments)))
        no_deps = "--no-deps" in arguments
        skip = False
        for argument in arguments[1:]:
            if skip or argument.startswith("-"):
                skip = argument in ("-c", "--constraint")
                continue
            if self.index is not None:
                self.index.install(argument, no_deps)

    def util_pip_install(self, requirements):
        """Slicer 5.8/5.10 ``slicer.util.pip_install``: a string (split like a shell) or a list of arguments."""
        import shlex

        if isinstance(requirements, str):
            arguments = shlex.split(requirements)
        elif isinstance(requirements, list):
            arguments = requirements
        else:
            raise ValueError("pip_install requirement input must be string or list")
        self._run_pip(["install", *arguments])

    def packaging_pip_install(self, requirements, constraints=None, no_deps_requirements=None, skip_packages=None,
                              blocking=True, show_progress=True, requester=None, parent=None,
                              logCallback=None, completedCallback=None):  # noqa: N803  (Slicer's API)
        """Slicer 5.12 ``pip_install`` (also ``slicer.util.pip_install``); skip_packages means --no-deps."""
        import shlex

        arguments = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
        constraint = ["-c", str(constraints)] if constraints else []
        if skip_packages is not None:
            for requirement in arguments:
                self._run_pip(["install", "--no-deps", *constraint, requirement])
            return []
        self._run_pip(["install", *constraint, *arguments])
        return None

    def load_requirements(self, path):
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
        return [line for line in lines if line and not line.startswith(("#", "-"))]

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        """Slicer 5.12 ``pip_ensure``: only the missing ones; nothing under --testing unless asked."""
        from packaging.requirements import Requirement

        requirements = requirements.split() if isinstance(requirements, str) else [str(r) for r in requirements]
        self.events.append(("pip_ensure", requirements, dict(constraints=constraints, skip_packages=skip_packages,
                                                             prompt_install=prompt_install,
                                                             skip_in_testing=skip_in_testing)))
        importlib.invalidate_caches()
        missing = []
        for line in requirements:
            requirement = Requirement(line)
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                installed = None
            if installed is None or installed not in requirement.specifier:
                missing.append(line)
        if not missing:
            return None
        if skip_in_testing and self.testing:
            self.events.append(("skipped in testing", missing))
            return None
        if prompt_install and not self.confirm(f"{len(missing)} Python packages need to be installed."):
            raise RuntimeError("User declined package installation")
        return self.packaging_pip_install(missing, constraints=constraints, skip_packages=skip_packages)


class PyTorchUtilsLogicStandIn:
    """PyTorchUtilsLogic.installTorch as SlicerPyTorch has it: it never checks what is installed; it asks
    (unless --testing), runs ``light_the_torch install torch<req> torchvision``, imports torch."""

    def __init__(self, slicer_stand_in: SlicerStandIn):
        self.slicer_stand_in = slicer_stand_in

    def installTorch(self, askConfirmation=False, forceComputationBackend=None,  # noqa: N802, N803  (its API)
                     torchVersionRequirement=None):  # noqa: N803
        stand_in = self.slicer_stand_in
        arguments = ["install", "torch" + (torchVersionRequirement or ""), "torchvision"]
        if askConfirmation and not stand_in.testing:
            if not stand_in.confirm(f"PyTorch will be downloaded and installed using light-the-torch "
                                   f"(ltt {' '.join(arguments)})."):
                return None
        stand_in.events.append(("light_the_torch", arguments))
        stand_in.events.append(("import torch",))
        return torch
