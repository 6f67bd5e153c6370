"""A 3D picture of the implant (target surface, OARs, needles, seeds) rendered offscreen with VTK to PNG.

Input geometry is LPS mm. The camera looks at the target from the patient's anterior-left-superior side so
that a reader sees needles and seeds in front of the target surface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from navigator.core.volume import Volume

# Colours (RGB 0-1): target red, CTV orange, OARs in muted tones, needles grey, seeds gold, extra seeds cyan.
TARGET_RGB = (0.85, 0.2, 0.2)
CTV_RGB = (1.0, 0.6, 0.1)
NEEDLE_RGB = (0.75, 0.75, 0.78)
SEED_RGB = (0.95, 0.8, 0.25)
SUPPLEMENT_RGB = (0.2, 0.85, 0.95)
OAR_RGBS = [(0.3, 0.5, 0.9), (0.4, 0.8, 0.4), (0.7, 0.4, 0.8), (0.6, 0.6, 0.3), (0.3, 0.7, 0.7)]


def _surface_actor(vtk, mask: np.ndarray, grid: Volume, rgb, opacity: float):
    """Marching-cubes surface of a boolean mask (k, j, i) placed in LPS through the grid's geometry."""
    from vtk.util import numpy_support

    # Pad so surfaces touching the border close; vtkImageData wants x (= i) fastest, which (k, j, i) C order is.
    m = np.pad(mask.astype(np.uint8), 1)
    img = vtk.vtkImageData()
    img.SetDimensions(m.shape[2], m.shape[1], m.shape[0])
    img.SetSpacing(*grid.spacing_mm)
    img.SetOrigin(*(grid.origin_mm - grid.spacing_mm))  # padding shifts the first voxel by one
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(m.ravel(), deep=True))
    mc = vtk.vtkFlyingEdges3D()
    mc.SetInputData(img)
    mc.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(mc.GetOutputPort())
    smooth.SetNumberOfIterations(15)
    # Axis-aligned grids only: a flipped axis (feet-first) is handled by a scale transform of the actor.
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(smooth.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*rgb)
    actor.GetProperty().SetOpacity(opacity)
    signs = np.sign(np.diag(grid.direction))
    if np.any(signs < 0):
        # Mirror about the grid origin along flipped axes: p = o + s * (p' - o).
        t = vtk.vtkTransform()
        o = grid.origin_mm
        t.Translate(*o)
        t.Scale(*signs)
        t.Translate(*(-o))
        actor.SetUserTransform(t)
    return actor


def _tube_actor(vtk, a_mm, b_mm, radius_mm: float, rgb, opacity: float = 1.0):
    line = vtk.vtkLineSource()
    line.SetPoint1(*map(float, a_mm))
    line.SetPoint2(*map(float, b_mm))
    tube = vtk.vtkTubeFilter()
    tube.SetInputConnection(line.GetOutputPort())
    tube.SetRadius(radius_mm)
    tube.SetNumberOfSides(12)
    tube.CappingOn()
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(tube.GetOutputPort())
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*rgb)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def render_implant_png(path: Path, grid: Volume | None = None, target_mask: np.ndarray | None = None,
                       ctv_mask: np.ndarray | None = None, oar_masks: dict[str, np.ndarray] | None = None,
                       needles: list[tuple[np.ndarray, np.ndarray]] = (),
                       seeds_mm: np.ndarray | None = None, seed_axes: np.ndarray | None = None,
                       supplementary_mm: np.ndarray | None = None, size=(900, 700),
                       title: str = "") -> Path:
    """Render the scene to ``path`` (PNG). Needles as (entry_mm, tip_mm) pairs; seeds 4.5 x 0.8 mm capsules."""
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()  # no X server here: VTK falls back to EGL and says so loudly
    ren = vtk.vtkRenderer()
    ren.SetBackground(0.08, 0.09, 0.12)
    win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(*size)
    win.AddRenderer(ren)

    if grid is not None:
        if target_mask is not None and target_mask.any():
            ren.AddActor(_surface_actor(vtk, target_mask, grid, TARGET_RGB, 0.35))
        if ctv_mask is not None and ctv_mask.any():
            ren.AddActor(_surface_actor(vtk, ctv_mask, grid, CTV_RGB, 0.18))
        for n, (name, m) in enumerate((oar_masks or {}).items()):
            if m is not None and m.any():
                ren.AddActor(_surface_actor(vtk, m, grid, OAR_RGBS[n % len(OAR_RGBS)], 0.35))
    for entry, tip in needles:
        ren.AddActor(_tube_actor(vtk, entry, tip, 0.635, NEEDLE_RGB, 0.8))  # 18G: 1.27 mm diameter
    for pts, rgb in ((seeds_mm, SEED_RGB), (supplementary_mm, SUPPLEMENT_RGB)):
        if pts is None or len(pts) == 0:
            continue
        axes = seed_axes if (pts is seeds_mm and seed_axes is not None) else np.tile([0.0, 0.0, 1.0], (len(pts), 1))
        for p, u in zip(np.asarray(pts, float), np.asarray(axes, float)):
            u = u / (np.linalg.norm(u) or 1.0)
            # Drawn 1.5x the real 0.8 mm diameter so seeds stay visible at this scale.
            ren.AddActor(_tube_actor(vtk, p - 2.25 * u, p + 2.25 * u, 0.6, rgb))

    if title:
        text = vtk.vtkTextActor()
        text.SetInput(title)
        text.GetTextProperty().SetFontSize(18)
        text.GetTextProperty().SetColor(1, 1, 1)
        text.SetDisplayPosition(10, 10)
        ren.AddViewProp(text)

    ren.ResetCamera()
    cam = ren.GetActiveCamera()
    # LPS: anterior is -y, superior is +z; look from anterior-left-superior, head up.
    focal = np.array(cam.GetFocalPoint())
    dist = cam.GetDistance()
    view_dir = np.array([0.45, -0.8, 0.4])
    view_dir /= np.linalg.norm(view_dir)
    cam.SetPosition(*(focal + view_dir * dist))
    cam.SetViewUp(0, 0, 1)
    ren.ResetCameraClippingRange()
    cam.Zoom(1.3)
    win.Render()

    w2i = vtk.vtkWindowToImageFilter()
    w2i.SetInput(win)
    w2i.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(w2i.GetOutputPort())
    writer.Write()
    win.Finalize()
    return Path(path)
