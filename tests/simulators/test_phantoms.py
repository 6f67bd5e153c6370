"""Synthetic patients: catalogue, reproducibility, realistic HU, DICOM that loads with the geometry it claims,
structures whose volumes match their masks, scans with motion/needle/seed truth, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from navigator.io.dicom import load_ct_series
from navigator.errors import InputError
from navigator.anatomy.structures import mask_volume_cc, structure_mask
from navigator.io.dicom import read_structure_set
from simulators import phantoms as ph
from tests.conftest import REPO

FAST = dict(n_slices=24)  # a shorter scan: the same anatomy around the node, quicker to make


@pytest.fixture(scope="module")
def neck():
    return ph.make_patient("neck", seed=3, **FAST)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("neck_ffs")
    return ph.write_case("neck_ffs", 5, out, **FAST), out


def test_catalogue_names_cases_and_refuses_unknown_ones():
    names = ph.list_cases()
    assert {"neck", "mediastinum", "neck_small", "neck_ffs"} <= set(names)
    with pytest.raises(InputError, match="unknown phantom case"):
        ph.make_patient("knee", 0)
    with pytest.raises(InputError, match="node_diameter_mm"):
        ph.make_patient("neck", 0, node_diameter_mm=80)
    with pytest.raises(InputError, match="unknown option"):
        ph.make_patient("neck", 0, colour="red")


def test_same_seed_same_patient_other_seed_other_patient():
    a = ph.make_patient("neck_small", 1, n_slices=8)
    b = ph.make_patient("neck_small", 1, n_slices=8)
    c = ph.make_patient("neck_small", 2, n_slices=8)
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.ct.origin_mm, b.ct.origin_mm)
    assert (a.ct.series_uid, a.ct.frame_of_reference_uid) == (b.ct.series_uid, b.ct.frame_of_reference_uid)
    assert a.ct.series_uid != c.ct.series_uid
    assert not np.allclose(a.node_center_mm, c.node_center_mm)


def test_grid_is_anisotropic_with_a_non_zero_origin(neck):
    sp = neck.ct.spacing_mm
    assert sp[0] == sp[1] and sp[2] == 2.5 and 0.75 < sp[0] < 1.0
    assert np.all(np.abs(neck.ct.origin_mm) > 1.0)
    assert neck.ct.array.dtype == np.float32 and neck.ct.array.shape == (24, 256, 256)
    assert neck.ct.patient_id and neck.ct.study_uid and neck.ct.frame_of_reference_uid and neck.ct.series_uid


def test_neck_structures_and_realistic_hu(neck):
    s = neck.structures
    for name in ("GTV", "BODY", "Skin", "CarotidArtery_R", "CarotidArtery_L", "JugularVein_R", "JugularVein_L",
                 "Trachea", "Esophagus", "Spine", "SpinalCord"):
        assert s[name].any(), name
    hu = neck.ct.array
    core = lambda name: ph.cases.structure_occupancy(neck.anatomy.scene, name, neck.ct) > 0.999  # noqa: E731
    gtv = hu[core("GTV")]
    assert 25 < np.median(gtv) < 65                          # node 55 HU with a necrotic centre of 15 HU
    assert 10 < np.percentile(gtv, 5) < 40                   # the necrosis is there
    assert 200 < np.median(hu[core("CarotidArtery_R")]) < 300
    assert 130 < np.median(hu[core("JugularVein_R")]) < 210
    assert np.median(hu[s["SpinalCord"]]) == pytest.approx(35, abs=15)
    assert hu[s["Spine"]].max() > 600
    # image noise in fat (away from edges): 12 HU +- texture
    fat = core("BODY") & (np.abs(hu + 100) < 80) & ~np.any([s[n] for n in s if n not in ("BODY",)], axis=0)
    assert 8 < hu[fat].std() < 25
    assert np.percentile(hu[s["Trachea"]], 10) < -900
    assert neck.ct.array.min() >= -1024 and neck.ct.array.max() <= 3071


def test_node_sizes_follow_the_option():
    for d in (10.0, 50.0):
        p = ph.make_patient("neck", 4, node_diameter_mm=d, n_slices=int(d / 2.5) + 12)
        shape_cc = np.pi * d ** 3 / 6 / 1000
        assert p.truth()["node"]["shape_volume_cc"] == pytest.approx(shape_cc, rel=1e-6)
        # the GTV is the node less the vessels beside it: most of the shape, never more
        gtv_cc = p.structure_cc("GTV")
        assert 0.8 * shape_cc < gtv_cc < 1.02 * shape_cc
        assert p.structures["GTV"].sum() * p.ct.voxel_volume_cc == pytest.approx(gtv_cc, rel=0.08)
        # the whole node is inside the scan and under the skin
        assert not (p.structures["GTV"] & ~p.structures["BODY"]).any()


def test_mediastinum_case():
    p = ph.make_patient("mediastinum", 2, n_slices=12)
    for name in ("GTV", "BODY", "Aorta", "Lung_L", "Lung_R", "Sternum", "Trachea", "Esophagus", "Spine",
                 "SpinalCord", "MainBronchus_L", "MainBronchus_R"):
        assert name in p.structures, name
    assert p.structures["GTV"].any() and p.structures["Lung_R"].any()
    lung_core = ph.cases.structure_occupancy(p.anatomy.scene, "Lung_R", p.ct) > 0.999
    assert np.median(p.ct.array[lung_core]) == pytest.approx(-850, abs=40)
    assert not (p.structures["GTV"] & (p.structures["Lung_L"] | p.structures["Lung_R"])).any()
    # the body fits the field of view (a BODY outline never touches the image edge)
    body = p.structures["BODY"]
    assert not (body[:, 0, :].any() or body[:, -1, :].any() or body[:, :, 0].any() or body[:, :, -1].any())


def test_written_series_loads_with_the_geometry_the_truth_claims(written):
    case, out = written
    truth = json.loads((out / "truth.json").read_text())
    ct = load_ct_series(out / "preplan" / "ct")
    np.testing.assert_allclose(ct.origin_mm, truth["ct"]["origin_mm"], atol=1e-3)
    np.testing.assert_allclose(ct.spacing_mm, truth["ct"]["spacing_mm"], atol=1e-4)
    np.testing.assert_allclose(ct.direction, truth["ct"]["direction"], atol=1e-6)
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, 1.0, -1.0]))     # feet-first
    assert list(ct.shape_ijk) == truth["ct"]["shape_ijk"]
    assert ct.meta["patient_position"] == "FFS" == truth["patient"]["patient_position"]
    assert ct.frame_of_reference_uid == truth["patient"]["frame_of_reference_uid"]
    assert ct.series_uid == truth["patient"]["series_uid"]
    assert ct.patient_id == truth["patient"]["patient_id"]
    np.testing.assert_array_equal(ct.array, case.patient.ct.array)
    # the node's truth position is inside the GTV of the loaded series
    ijk = np.rint(ct.lps_to_ijk(truth["node"]["center_mm"])).astype(int)
    assert case.patient.structures["GTV"][ijk[2], ijk[1], ijk[0]]
    ds = pydicom.dcmread(sorted((out / "preplan" / "ct").iterdir())[0], stop_before_pixels=True)
    assert ds.Modality == "CT" and ds.PatientPosition == "FFS"


def test_structures_read_back_match_their_masks_and_volumes(written):
    case, out = written
    truth = json.loads((out / "truth.json").read_text())
    ct = load_ct_series(out / "preplan" / "ct")
    rs = read_structure_set(out / "preplan" / "RS.dcm", ct)
    assert set(rs) == set(case.patient.structures) and "GTV" in rs
    ds = pydicom.dcmread(out / "preplan" / "RS.dcm")
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    assert {names[n]: t for n, t in types.items()}["GTV"] == "GTV"
    for name, st in rs.items():
        mask = structure_mask(st, ct)
        np.testing.assert_array_equal(mask, case.patient.structures[name], err_msg=name)
        assert mask_volume_cc(mask, ct) == pytest.approx(truth["structures"][name]["mask_volume_cc"], abs=1e-3)
        # mask volume vs the partial-volume truth: the >= 0.5 rule is unbiased up to the surface's curvature
        assert mask_volume_cc(mask, ct) == pytest.approx(truth["structures"][name]["volume_cc"], rel=0.06), name


def test_scans_carry_truth_in_their_own_frame(neck):
    rng = np.random.default_rng(1)
    needles, seeds, axes = ph.demo_implant(neck, n_needles=4, seeds_per_needle=2)
    m = ph.Motion(ph.random_rigid(rng, center_mm=neck.node_center_mm),
                  ph.random_deformation(rng, neck.node_center_mm))
    io = ph.intraop_scan(neck, needles, motion=m, length_mm=60.0)
    t = io.meta["truth"]
    assert io.frame_of_reference_uid != neck.ct.frame_of_reference_uid and io.series_uid != neck.ct.series_uid
    assert io.patient_id == neck.ct.patient_id
    np.testing.assert_allclose(t["preplan_to_scan"], m.rigid_preplan_to_scan)
    np.testing.assert_allclose(t["needles_mm"][0][1], m.preplan_to_scan(needles[0][1]))
    np.testing.assert_allclose(ph.Motion.from_dict(t["motion"]).scan_to_preplan(t["needles_mm"][0][1]),
                               needles[0][1], atol=1e-5)
    # the needle tips are bright where the truth says
    for _, tip in t["needles_mm"]:
        ijk = io.lps_to_ijk(np.asarray(tip) - 1.5 * (np.asarray(tip) - np.asarray(_)) / np.linalg.norm(
            np.asarray(tip) - np.asarray(_)))
        k, j, i = np.rint(ijk[::-1]).astype(int)
        assert io.array[max(k - 1, 0):k + 2, j - 1:j + 2, i - 1:i + 2].max() > 2000
    post = ph.postimplant_scan(neck, seeds, axes, motion=m, slice_mm=5.0, length_mm=60.0)
    tp = post.meta["truth"]
    assert post.spacing_mm[2] == 5.0 and len(tp["seeds_mm"]) == len(seeds)
    for p in tp["seeds_mm"]:
        k, j, i = np.rint(post.lps_to_ijk(p)[::-1]).astype(int)
        assert post.array[k, j - 1:j + 2, i - 1:i + 2].max() > 1500
    # same inputs, same scan; the scan's own rng makes it reproducible
    again = ph.postimplant_scan(neck, seeds, axes, motion=m, slice_mm=5.0, length_mm=60.0)
    np.testing.assert_array_equal(again.array, post.array)
    assert again.series_uid == post.series_uid


def test_cli_list_and_write(tmp_path):
    env_cmd = [sys.executable, "-m", "simulators.phantoms"]
    out = subprocess.run(env_cmd + ["list"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and "neck" in out.stdout and "mediastinum" in out.stdout
    bad = subprocess.run(env_cmd + ["write", "--case", "knee", "--seed", "1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "unknown phantom case" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run(env_cmd + ["write", "--case", "neck_small", "--seed", "7", "--out", str(tmp_path / "c"),
                                   "--n-slices", "20"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "c" / "preplan" / "RS.dcm").is_file() and (tmp_path / "c" / "truth.json").is_file()
    assert len(list((tmp_path / "c" / "preplan" / "ct").glob("*.dcm"))) == 20
    assert ph.load_truth(tmp_path / "c" / "truth.json")["case"] == "neck_small"


def test_scan_takes_needle_draws_and_a_smaller_field_of_view(neck):
    needles, _, _ = ph.demo_implant(neck, n_needles=3)
    draws = ph.draw_needles(needles, ph.NeedleErrorModel(1.0, 1.0, 1.0), np.random.default_rng(2))
    io = ph.intraop_scan(neck, draws, length_mm=20.0, matrix=(128, 96), pixel_mm=0.7, rng=4)
    assert io.array.shape == (8, 96, 128) and io.spacing_mm[0] == 0.7
    t = io.meta["truth"]
    assert [d["tip_mm"] for d in t["needle_draws"]] == [d.tip_mm.tolist() for d in draws]
    np.testing.assert_allclose(t["needles_mm"][1][1], draws[1].tip_mm)   # no motion: scan frame = pre-plan
    assert t["needle_draws"][0]["tip_error_mm"] == pytest.approx(draws[0].tip_error_mm)


def test_write_scan(tmp_path, neck):
    needles, _, _ = ph.demo_implant(neck, n_needles=2)
    io = ph.intraop_scan(neck, needles, length_mm=30.0)
    ct_dir = ph.write_scan(io, tmp_path / "intraop")
    back = load_ct_series(ct_dir)
    np.testing.assert_allclose(back.origin_mm, io.origin_mm, atol=1e-3)
    np.testing.assert_array_equal(back.array, io.array)
    t = json.loads((tmp_path / "intraop" / "truth.json").read_text())
    assert t["frame_of_reference_uid"] == back.frame_of_reference_uid
    np.testing.assert_allclose(t["needles_mm"], io.meta["truth"]["needles_mm"])


def test_written_dicom_passes_the_iod_check(written):
    """dicom3tools' dciodvfy finds no errors in a phantom CT slice and its RT Structure Set."""
    from tests.conftest import dciodvfy

    _, out = written
    for path in (sorted((out / "preplan" / "ct").glob("*.dcm"))[0], out / "preplan" / "RS.dcm"):
        errors, _ = dciodvfy(path)
        assert errors == [], (path.name, errors)
