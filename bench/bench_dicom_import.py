"""Speed of the image import: a 512 x 512 x 100 CT series and its structures (issue #2 items 2-3).

    python bench/bench_dicom_import.py [--slices 100] [--repeat 3]

Writes a synthetic 512 x 512 CT series into a temporary folder, built from the header of a real IBSI slice
(shared/data/ibsi-sts-ct beside the checkout, 16-bit signed, implicit VR), with 50 axial contours (a 50 mm ellipse per slice),
then times ``load_ct_series``, ``structure_mask``, ``structure_fraction`` (supersample 4), ``expand_margin``
(5 mm) and ``mask_to_contours``, and prints a table with machine details. The first (cold) load also includes
the operating system's file cache filling.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from navigator.io.dicom import load_ct_series  # noqa: E402
from navigator.core.structure import Structure  # noqa: E402
from navigator.anatomy.structures import (  # noqa: E402
    expand_margin,
    mask_to_contours,
    structure_fraction,
    structure_mask,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "shared/data/ibsi-sts-ct/STS_001/ct/000000.dcm"


def write_series(folder: Path, n_slices: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(TEMPLATE)
    ds.Rows, ds.Columns = 512, 512
    ds.PixelSpacing = [0.9765625, 0.9765625]
    series, frame = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(n_slices):
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series, frame
        ds.ImagePositionPatient = [-250.0, -250.0, -100.0 + 2.5 * k]
        ds.SliceLocation = -100.0 + 2.5 * k
        ds.InstanceNumber = k + 1
        ds.PixelData = rng.integers(-1000, 1500, (512, 512), dtype=np.int16).tobytes()
        ds.save_as(folder / f"{rng.integers(1 << 40):x}.dcm")  # names unrelated to position


def timed(fn, repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_series(folder, args.slices)
        t0 = time.perf_counter()
        ct = load_ct_series(folder)
        rows.append(("load_ct_series (first call)", time.perf_counter() - t0))
        t, ct = timed(lambda: load_ct_series(folder), args.repeat)
        rows.append((f"load_ct_series {ct.shape_ijk}", t))
    z = ct.axis_coords_mm()[2]
    t_ = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    contours = [np.column_stack([30 + 50 * np.cos(t_), -20 + 35 * np.sin(t_), np.full(200, zz)])
                for zz in z[25:75]]
    s = Structure("ellipse", 1, contours)
    t, mask = timed(lambda: structure_mask(s, ct), args.repeat)
    rows.append((f"structure_mask ({len(contours)} contours x 200 points)", t))
    t, _ = timed(lambda: structure_fraction(s, ct, supersample=4), args.repeat)
    rows.append(("structure_fraction (supersample 4)", t))
    t, ctv = timed(lambda: expand_margin(mask, ct, 5.0), args.repeat)
    rows.append((f"expand_margin 5 mm ({int(mask.sum())} voxels)", t))
    t, _ = timed(lambda: mask_to_contours(ctv, ct), args.repeat)
    rows.append(("mask_to_contours", t))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, numpy {np.__version__}, pydicom {pydicom.__version__}")
    print(f"{'step':<52} {'seconds':>8}")
    for name, sec in rows:
        print(f"{name:<52} {sec:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
