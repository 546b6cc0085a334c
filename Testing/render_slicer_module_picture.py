"""Render what the Slicer module produces, without the Slicer application: the sample phantom segmented
through the module's logic (slicer-core MRML scene, the bundled demo model, `lckd segment` in its own
process), shown as Slicer shows it: segment colours over T1ce in 2-D, the segments' closed surfaces
in 3-D (VTK off-screen rendering), region volumes and the model's expected Dice.

    .venv/bin/python Testing/render_slicer_module_picture.py [OUT.png]   (default Resources/SlicerModuleResult.png)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "LCKDSegmentation"), str(ROOT / "Testing")]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

from LCKDSegmentationLib.logic import LCKDSegmentationLogic, SegmentationOptions  # noqa: E402
from LCKDSegmentationLib.modelCard import expectationText, readModelSummary  # noqa: E402
from LCKDSegmentationLib.modelCatalog import entryByName, loadCatalog, localPath  # noqa: E402
from LCKDSegmentationLib.regionVolumes import volumesTable  # noqa: E402
from LCKDSegmentationLib.sampleData import nodeName, sampleFile  # noqa: E402
from LCKDSegmentationLib.selfTest import segmentMasks  # noqa: E402
from LCKDSegmentationLib.volumeExport import numpyToVtkMatrix, volumeArray, worldIJKToRAS  # noqa: E402


def load_sample(scene):
    volumes = {}
    for sequence in ("flair", "t1", "t1ce", "t2"):
        image = nib.load(str(sampleFile(sequence)))
        data = np.asarray(image.dataobj)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", nodeName(sequence))
        vtk_image = vtk.vtkImageData()
        vtk_image.SetDimensions(*data.shape)
        flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
        vtk_image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
        node.SetIJKToRASMatrix(numpyToVtkMatrix(image.affine))
        node.SetAndObserveImageData(vtk_image)
        volumes[sequence] = node
    return volumes


def render_surfaces(segmentation_node, size=(520, 520)):
    """The segments' closed surfaces, coloured as in Slicer, seen from the front-left, above."""
    LCKDSegmentationLogic.showIn3D(segmentation_node)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.76, 0.76, 0.90)
    renderer.SetBackground2(0.45, 0.45, 0.65)
    renderer.GradientBackgroundOn()
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        surface = segment.GetRepresentation("Closed surface")
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(surface)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segment.GetColor())
        actor.GetProperty().SetOpacity(0.35 if segment.GetName() == "oedema" else 1.0)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.SetViewUp(0, 0, 1)
    focal = np.array(camera.GetFocalPoint())
    camera.SetPosition(*(focal + np.array([-1.0, 1.4, 0.8]) * 160))
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return pixels[::-1, :, :3]


def overlay(ax, grey, masks, colours, title):
    ax.imshow(grey, cmap="gray", origin="lower", interpolation="nearest")
    rgba = np.zeros(grey.shape + (4,))
    for name, mask in masks.items():
        rgba[mask] = list(colours[name]) + [0.55]
    ax.imshow(rgba, origin="lower", interpolation="nearest")
    for name, mask in masks.items():
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colours[name]], linewidths=0.8)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def main(out: Path) -> None:
    scene = slicer.vtkMRMLScene()
    volumes = load_sample(scene)
    model = localPath(entryByName(loadCatalog(), "lckd-phantom-demo"))
    logic = LCKDSegmentationLogic()
    started = time.monotonic()
    result = logic.segment(scene, volumes, SegmentationOptions(modelPath=model, device="cpu"))
    seconds = time.monotonic() - started
    node = result.segmentationNode
    reference = volumes[result.reference]
    grey = volumeArray(reference).astype(float)
    shape, affine = grey.shape, worldIJKToRAS(reference)
    found = segmentMasks(node, np.zeros(shape, np.uint8), affine)
    masks = {name: mask for name, (mask, _) in found.items()}
    colours = {name: segment.GetColor() for name, (_, segment) in found.items()}
    union = np.zeros(shape, bool)
    for mask in masks.values():
        union |= mask
    centre = np.argwhere(union).mean(axis=0).round().astype(int) if union.any() else np.array(shape) // 2
    # radiological display as in Slicer's slice views: the patient's right on the left of the screen
    axial = {name: mask[::-1, :, centre[2]].T for name, mask in masks.items()}
    coronal = {name: mask[::-1, centre[1], :].T for name, mask in masks.items()}

    figure = plt.figure(figsize=(15.5, 5.2), dpi=100)
    grid = figure.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.95])
    overlay(figure.add_subplot(grid[0]), grey[::-1, :, centre[2]].T, axial, colours,
            f"Axial (T1ce, slice {centre[2]})")
    overlay(figure.add_subplot(grid[1]), grey[::-1, centre[1], :].T, coronal, colours, f"Coronal (slice {centre[1]})")
    ax3d = figure.add_subplot(grid[2])
    ax3d.imshow(render_surfaces(node))
    ax3d.set_title("Show 3D: closed surfaces", fontsize=10)
    ax3d.axis("off")
    text = figure.add_subplot(grid[3])
    text.axis("off")
    summary = readModelSummary(model)
    lines = [f"Segmentation node: {node.GetName()}", "", "Segments (terminology):"]
    codes = {"necrosis": "SCT 6574001", "oedema": "SCT 79654002", "enhancing tumour": "NCIt C113842"}
    lines += [f"  {name} ({codes[name]})" for name in codes if name in masks]
    lines += ["", "Region volumes (mL):"] + [f"  {name}: {value}" for name, value in volumesTable(result.volumesMl)]
    lines += ["", "With FLAIR + T1 only, the model card says:"]
    lines += ["  " + line for line in expectationText(summary, ["flair", "t1"]).splitlines()[:2]]
    lines += ["", f"Demo model, CPU, {seconds:.0f} s. Not for clinical use."]
    wrapped = []
    for line in lines:
        while len(line) > 58:
            cut = line.rfind(" ", 0, 58)
            wrapped.append(line[:cut])
            line = "    " + line[cut + 1:]
        wrapped.append(line)
    text.text(0.0, 1.0, "\n".join(wrapped), va="top", ha="left", family="monospace", fontsize=8.6,
              transform=text.transAxes)
    for name, colour in colours.items():
        text.plot([], [], "s", color=colour, label=name)
    text.legend(loc="lower left", fontsize=9, frameon=False)
    figure.suptitle("LCKD Brain Tumour Segmentation: sample phantom, all four sequences (bundled demo model)",
                    fontsize=12)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"{out}: {result.volumesMl}, {seconds:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "Resources" / "SlicerModuleResult.png")
