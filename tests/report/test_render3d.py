"""The offscreen VTK picture of an implant: a real PNG with the scene in it."""

import numpy as np

from navigator.core.volume import Volume
from navigator.report.render3d import render_implant_png


def test_render_implant_png_draws_target_needles_and_seeds(tmp_path):
    grid = Volume(np.zeros((30, 50, 50), np.float32), origin_mm=[-25, -10, 100], spacing_mm=[1, 1, 1.25],
                  direction=np.diag([1.0, 1.0, -1.0]))  # feet-first k axis: the surface must still be placed
    kk, jj, ii = np.indices(grid.array.shape)
    pts = grid.ijk_to_lps(np.stack([ii, jj, kk], -1))
    centre = np.array([0.0, 15.0, 82.0])
    target = np.linalg.norm(pts - centre, axis=-1) < 10
    needles = [(centre + [dx, -60, 0], centre + [dx, 8, 0]) for dx in (-5, 5)]
    seeds = np.array([centre + [dx, y, 0] for dx in (-5, 5) for y in (-5, 5)])
    out = render_implant_png(tmp_path / "implant.png", grid, target, None, {}, needles, seeds,
                             np.tile([0, 1.0, 0], (len(seeds), 1)), title="unit test")
    import vtk

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(out))
    reader.Update()
    dims = reader.GetOutput().GetDimensions()
    assert dims[:2] == (900, 700)
    from vtk.util import numpy_support

    rgb = numpy_support.vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())
    background = np.all(rgb[:, :3] == rgb[0, :3], axis=1)
    assert 0.005 < 1 - background.mean() < 0.9  # something was drawn, not everything
