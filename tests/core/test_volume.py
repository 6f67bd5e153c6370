"""``core.volume``: coarsening keeps geometry (block centres in LPS) and the reductions."""

from __future__ import annotations

import numpy as np

from navigator.core.volume import Volume, coarsen


def test_coarsen_blocks_keep_their_centres_and_reduce():
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # a rotated in-plane grid
    arr = np.arange(4 * 6 * 7, dtype=np.float32).reshape(4, 6, 7)
    vol = Volume(array=arr, origin_mm=np.array([10.0, -5.0, 3.0]), spacing_mm=np.array([0.5, 0.4, 2.0]),
                 direction=direction, frame_of_reference_uid="1.2.3")
    out, f = coarsen(vol, 1.0)
    assert f == (2, 2, 1) and out.array.shape == (4, 3, 3)  # 7 columns -> 3 blocks of 2 (one dropped)
    assert np.allclose(out.spacing_mm, [1.0, 0.8, 2.0])
    # the first coarse voxel's centre is the centre of its 2 x 2 block of fine voxels
    assert np.allclose(out.ijk_to_lps(np.zeros(3)), vol.ijk_to_lps(np.array([0.5, 0.5, 0.0])))
    assert out.array[1, 2, 1] == arr[1, 4:6, 2:4].mean()
    mask = vol.with_array(arr % 17 == 0)
    m, _ = coarsen(mask, 1.0, reduce="max")
    assert m.array.dtype == bool and m.array[0, 0, 0] == bool((arr[0, 0:2, 0:2] % 17 == 0).any())
    same, f1 = coarsen(vol, 0.3)
    assert same is vol and f1 == (1, 1, 1)
