"""``navigator tg43`` and ``navigator dose`` through the real command line: exit codes, CSV, files written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from navigator.physics import dose, tg43
from navigator.cli import main
from navigator.io.dicom import read_rtdose
from tests.conftest import IBSI, REPO  # ../shared beside the checkout (or $NAVIGATOR_SHARED)

STS = IBSI / "STS_001"


def test_tg43_table_on_stdout(capsys):
    rc = main(["tg43", "--model", "6711", "--sk-u", "2", "--along=-1,0,0.5,1", "--away", "0,0.5,1,2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out[0] == "along_cm\\away_cm,0,0.5,1,2"
    rows = {float(line.split(",")[0]): [float(v) for v in line.split(",")[1:]] for line in out[1:]}
    assert list(rows) == [-1.0, 0.0, 0.5, 1.0]
    assert rows[0.0][2] == pytest.approx(2 * 0.965, rel=1e-5)  # (along 0, away 1 cm) = S_K Λ
    assert rows[-1.0] == pytest.approx(rows[1.0], rel=1e-5)  # symmetric about the seed centre
    model = tg43.load_seed_model("6711")
    assert rows[0.5][3] == pytest.approx(float(tg43.dose_rate_cyl_cgy_h(model, 2.0, 0.5, 2.0)), rel=1e-5)


def test_tg43_as_a_subprocess_and_activity_option():
    res = subprocess.run([sys.executable, "-m", "navigator.cli", "tg43", "--model", "IAI-125A", "--activity-mci", "0.5",
                          "--along", "0", "--away", "1"], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert float(res.stdout.splitlines()[1].split(",")[1]) == pytest.approx(0.5 * 1.270 * 0.981, rel=1e-5)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "6702", "--sk-u", "1", "--along", "0", "--away", "1"], "IAI-125A"),
        (["--model", "6711", "--sk-u", "-1", "--along", "0", "--away", "1"], "positive"),
        (["--model", "6711", "--sk-u", "1", "--along", "0,x", "--away", "1"], "'x'"),
        (["--model", "6711", "--sk-u", "1", "--along", "0", "--away", "-1"], "-1"),
    ],
)
def test_tg43_bad_input_exits_2(argv, needle, capsys):
    assert main(["tg43", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_dose_on_own_grid(tmp_path, capsys):
    seeds = _write(tmp_path / "seeds.csv", "id,x_mm,y_mm,z_mm\n# planned seeds\na,10,20,30\nb,15,20,30\n\nc,10,26,31\n")
    out = tmp_path / "out"
    rc = main(["dose", "--seeds", str(seeds), "--model", "6711", "--seed-activity-mci", "0.5", "--grid-mm", "2",
               "--out", str(out), "--json"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "dose.json").read_text())
    assert printed == written
    assert written["seeds"] == 3 and written["grid_mm"] == [2.0, 2.0, 2.0]
    assert written["formalism"] == "1D" and written["compute_seconds"] >= 0
    assert "metrics" not in written
    # seeds span 5 x 6 x 1 mm; + 20 mm each side: ceil(span / 2 mm) + 1 voxel centres per axis
    assert written["voxels"] == 24 * 24 * 22
    ds = pydicom.dcmread(out / "RTDOSE.dcm")
    assert ds.Modality == "RTDOSE" and ds.DoseUnits == "GY"
    back = read_rtdose(out / "RTDOSE.dcm")
    pos = np.array([[10.0, 20.0, 30.0], [15.0, 20.0, 30.0], [10.0, 26.0, 31.0]])
    ref = dose.naive_dose_on_grid(back, pos, None, 0.635, tg43.load_seed_model("6711"))
    hot = ref > 0.1 * ref.max()
    np.testing.assert_allclose(back.array[hot], ref[hot], rtol=0.01)
    assert float(back.array.max()) == pytest.approx(written["max_dose_gy"], rel=1e-6)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("x_mm,y_mm\n1,2\n", "z_mm"),
        ("x_mm,y_mm,z_mm\n1,2,3\n4,five,6\n", "line 3"),
        ("x_mm,y_mm,z_mm\n1,2,3\n4,,6\n", "line 3"),
        ("x_mm,y_mm,z_mm,ux,uy\n1,2,3,0,1\n", "ux,uy,uz"),
        ("x_mm,y_mm,z_mm,ux,uy,uz\n1,2,3,0,0,1\n1,2,4,0,0,0\n", "line 3"),
        ("x_mm,y_mm,z_mm\n", "no seed rows"),
        ("x_mm,y_mm,z_mm\n1,2,inf\n", "line 2"),
    ],
)
def test_dose_bad_csv_exits_2_with_line(tmp_path, capsys, text, needle):
    seeds = _write(tmp_path / "seeds.csv", text)
    rc = main(["dose", "--seeds", str(seeds), "--model", "6711", "--seed-sk-u", "0.6", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and str(seeds) in err and "Traceback" not in err


def test_dose_grid_too_large_is_refused(tmp_path, capsys):
    seeds = _write(tmp_path / "s.csv", "x_mm,y_mm,z_mm\n0,0,0\n900,0,0\n0,900,700\n")  # an outlier in mm vs cm
    rc = main(["dose", "--seeds", str(seeds), "--model", "6711", "--seed-sk-u", "0.6", "--out", str(tmp_path / "o")])
    assert rc == 2 and "outlier" in capsys.readouterr().err


def test_dose_missing_file_and_missing_strength(tmp_path, capsys):
    assert main(["dose", "--seeds", str(tmp_path / "nope.csv"), "--model", "6711", "--seed-sk-u", "0.6",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    seeds = _write(tmp_path / "s.csv", "x_mm,y_mm,z_mm\n0,0,0\n")
    assert main(["dose", "--seeds", str(seeds), "--model", "6711", "--out", str(tmp_path / "o")]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def ct_dose(tmp_path_factory):
    """Four tilted IAI-125A seeds in the real STS_001 GTV, dose on its CT grid with the structure metrics."""
    tmp = tmp_path_factory.mktemp("ctdose")
    seeds = _write(tmp / "seeds.csv", "x_mm,y_mm,z_mm,ux,uy,uz\n66,6,-795,0,0,1\n76,6,-795,0,0,1\n"
                                      "66,16,-785,0,0.6,0.8\n76,16,-785,1,0,0\n")  # fmt: skip
    out = tmp / "out"
    rc = main(["dose", "--seeds", str(seeds), "--model", "IAI-125A", "--seed-sk-u", "0.6", "--ct", str(STS / "ct"),
               "--structures", str(STS / "RS.dcm"), "--target", "GTV_Mass_CT", "--rx-gy", "120", "--out", str(out)])  # fmt: skip
    return rc, out


def test_dose_on_ct_with_metrics(ct_dose):
    rc, out = ct_dose
    assert rc == 0
    result = json.loads((out / "dose.json").read_text())
    assert result["formalism"] == "2D" and result["seeds"] == 4
    assert result["grid_mm"] == pytest.approx([0.976562, 0.976562, 3.27], abs=1e-4)
    m = result["metrics"]
    assert {"ctv_cc", "D90_gy", "D100_gy", "V90_pct", "V100_pct", "V150_pct", "V200_pct", "HI", "oars"} <= set(m)
    assert 300 < m["ctv_cc"] < 420  # the sarcoma GTV, ~365 cc: four seeds cover a few % of it
    assert 0 < m["V100_pct"] < 5
    back = read_rtdose(out / "RTDOSE.dcm")
    ds = pydicom.dcmread(out / "RTDOSE.dcm")
    ct_ds = pydicom.dcmread(next((STS / "ct").iterdir()))
    assert ds.FrameOfReferenceUID == ct_ds.FrameOfReferenceUID
    assert back.array.shape[1:] == (ct_ds.Rows, ct_ds.Columns)


def test_dose_structures_need_ct_and_target_needs_rx(tmp_path, capsys):
    seeds = _write(tmp_path / "s.csv", "x_mm,y_mm,z_mm\n0,0,0\n")
    base = ["dose", "--seeds", str(seeds), "--model", "6711", "--seed-sk-u", "0.6", "--out", str(tmp_path / "o")]
    assert main([*base, "--structures", str(STS / "RS.dcm")]) == 2
    assert main([*base, "--ct", str(STS / "ct"), "--structures", str(STS / "RS.dcm"), "--target", "GTV_Mass_CT"]) == 2
    assert main([*base, "--ct", str(STS / "ct")]) == 2  # the seed at (0, 0, 0) is outside this CT
    assert "Traceback" not in capsys.readouterr().err
