"""RT Plan (permanent I-125 LDR) export conformance, our own round trip, and import of other systems' layouts."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from navigator.io.dicom import PatientInfo, read_rtplan, write_ct_series, write_rtplan, write_rtstruct
from navigator.errors import PlanError
from navigator.core.volume import Volume
from navigator.core.plan import Needle, Plan, PlannedSeed
from tests.conftest import dciodvfy  # the one dicom3tools IOD check

RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"


FOR_UID = "1.2.826.0.1.3680043.8.498.777"


def oblique_plan(seed_model="6711") -> Plan:
    """Three needles on a 5 mm template tilted in LPS (no axis-aligned shortcut), one without seeds."""
    axis = np.array([0.3, 0.9, -0.2])
    axis /= np.linalg.norm(axis)
    u = np.cross(axis, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    template_ref = np.array([-41.37, -88.123, 102.5])
    needles, seeds = [], []
    for n, (hole, du, depth_mm, seed_depths) in enumerate([("C3", 0.0, 72.4, [66.4, 59.9, 53.3]),
                                                           ("D3", 5.0, 68.05, [62.0, 55.5]),
                                                           ("C4.5", 10.0, 60.0, [])]):
        entry = template_ref + du * u
        nid = f"N{n + 1}"
        needles.append(Needle(nid, entry, entry + depth_mm * axis, hole))
        for s, d in enumerate(seed_depths):
            seeds.append(PlannedSeed(f"{nid}-S{s + 1}", nid, entry + d * axis + [0.0013, -0.0007, 0.0]))
    return Plan(FOR_UID, "1.2.826.0.1.3680043.8.498.778", "CTV", 145.0, seed_model, 0.6351, needles, seeds,
                extra={"template": {"number": 2, "type": "GUIDE TEMPLATE", "name": "neck 5 mm"}})


def assert_same_plan(a: Plan, b: Plan, tol_mm=0.01):
    assert [(n.id, n.hole) for n in a.needles] == [(n.id, n.hole) for n in b.needles]
    for na, nb in zip(a.needles, b.needles):
        np.testing.assert_allclose(na.entry_mm, nb.entry_mm, atol=tol_mm)
        np.testing.assert_allclose(na.tip_mm, nb.tip_mm, atol=tol_mm)
    assert [(s.id, s.needle_id) for s in a.seeds] == [(s.id, s.needle_id) for s in b.seeds]
    np.testing.assert_allclose(a.seed_positions_mm(), b.seed_positions_mm(), atol=tol_mm)
    assert (a.target, a.seed_model, a.frame_of_reference_uid, a.ct_series_uid) == \
        (b.target, b.seed_model, b.frame_of_reference_uid, b.ct_series_uid)
    assert a.prescription_gy == pytest.approx(b.prescription_gy)
    assert a.seed_sk_u == pytest.approx(b.seed_sk_u)


ONLY_WARNING = "Unrecognized defined term <INTERSTITIAL> for value 1 of attribute <Application Setup Type>"


def test_rtplan_without_structure_set_conforms_and_round_trips(tmp_path):
    plan = oblique_plan()
    path, uid = write_rtplan(tmp_path / "RP.dcm", plan, reference_date="20261118", label="preplan")
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert all(ONLY_WARNING in w for w in warnings), warnings
    back = read_rtplan(path)
    assert_same_plan(plan, back)
    assert back.extra["rtplan_sop_uid"] == uid
    assert back.extra["template"] == {"number": 2, "type": "GUIDE TEMPLATE", "name": "neck 5 mm"}
    assert back.extra["source"]["reference_date"] == "20261118"
    assert "import_notes" not in back.extra  # nothing had to be estimated


def test_rtplan_source_and_channels_follow_the_standard(tmp_path):
    plan = oblique_plan()
    path, uid = write_rtplan(tmp_path / "RP.dcm", plan, reference_date="20261118")
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == uid and ds.SOPClassUID == RT_PLAN and ds.Modality == "RTPLAN"
    assert (ds.BrachyTreatmentTechnique, ds.BrachyTreatmentType) == ("PERMANENT", "LDR")
    assert ds.RTPlanGeometry == "TREATMENT_DEVICE" and ds.FrameOfReferenceUID == FOR_UID
    src = ds.SourceSequence[0]
    assert (src.SourceIsotopeName, float(src.SourceIsotopeHalfLife), float(src.ReferenceAirKermaRate)) == \
        ("I-125", 59.4, 0.6351)
    assert src.SourceModelID == "6711" and src.SourceStrengthReferenceDate == "20261118"
    assert float(ds.DoseReferenceSequence[0].TargetPrescriptionDose) == 145.0
    setup = ds.ApplicationSetupSequence[0]
    assert (setup.TemplateNumber, setup.TemplateType, setup.TemplateName) == (2, "GUIDE TEMPLATE", "neck 5 mm")
    channels = setup.ChannelSequence
    assert len(channels) == len(plan.seeds) + 1  # one per seed, plus the needle without seeds
    mean_life_h = 59.4 * 24 / math.log(2)
    assert float(setup.TotalReferenceAirKerma) == pytest.approx(5 * 0.6351 * mean_life_h, rel=1e-6)
    for s, ch in enumerate(channels[:5]):
        seed = plan.seeds[s]
        needle = plan.needle(seed.needle_id)
        assert ch.ChannelNumber == s + 1 and ch.SourceMovementType == "FIXED"
        assert ch.AfterloaderChannelID == seed.id and ch.SourceApplicatorName == needle.id
        assert ch.SourceApplicatorID == needle.hole
        assert ch.SourceApplicatorNumber == plan.needles.index(needle) + 1
        cps = ch.BrachyControlPointSequence
        assert len(cps) == 2 and ch.NumberOfControlPoints == 2
        assert [float(cp.CumulativeTimeWeight) for cp in cps] == [0.0, 1.0]
        for cp in cps:
            np.testing.assert_allclose([float(v) for v in cp.ControlPoint3DPosition], seed.position_mm, atol=1e-6)
    empty = channels[5]
    assert float(empty.FinalCumulativeTimeWeight) == 0.0 and empty.SourceApplicatorName == "N3"


def test_rtplan_with_ct_and_structure_set_conforms(tmp_path):
    plan = oblique_plan("IAI-125A")
    rng = np.random.default_rng(3)
    ct = Volume(rng.normal(0, 20, (6, 16, 12)).astype(np.float32), [-60.0, -100.0, 80.0], [4.0, 5.0, 5.0],
                frame_of_reference_uid=FOR_UID, patient_id="P9", patient_name="Test^Plan")
    patient = PatientInfo.from_volume(ct)
    write_ct_series(ct, tmp_path / "ct", patient)
    plan.ct_series_uid = ct.series_uid
    tracks = {n.id: [np.stack([n.entry_mm, n.tip_mm])] for n in plan.needles}
    rs_uid = "1.2.826.0.1.3680043.8.498.4242"
    write_rtstruct(tmp_path / "RS.dcm", ct, {"CTV": [np.array([[-50, -90, 90], [-40, -90, 90], [-45, -80, 90.]])],
                                             **tracks},
                   patient, roi_types={"CTV": "CTV", **{k: "BRACHY_CHANNEL" for k in tracks}},
                   sop_instance_uid=rs_uid)
    path, uid = write_rtplan(tmp_path / "RP.dcm", plan, ct, patient, structure_set_sop_uid=rs_uid,
                             target_roi_number=1, needle_roi_numbers={"N1": 2, "N2": 3, "N3": 4})
    errors, warnings = dciodvfy(path)
    assert errors == []
    assert all(ONLY_WARNING in w for w in warnings), warnings
    ds = pydicom.dcmread(path)
    assert ds.RTPlanGeometry == "PATIENT"
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs_uid
    assert ds.DoseReferenceSequence[0].DoseReferenceStructureType == "VOLUME"
    assert (ds.PatientID, ds.StudyInstanceUID) == ("P9", ct.study_uid)
    assert [ch.ReferencedROINumber for ch in ds.ApplicationSetupSequence[0].ChannelSequence] == [2, 2, 2, 3, 3, 4]
    back = read_rtplan(path, frame_of_reference_uid=FOR_UID)
    assert_same_plan(plan, back)
    assert back.seed_model == "IAI-125A"
    with pytest.raises(PlanError, match="frame of reference"):
        read_rtplan(path, frame_of_reference_uid="1.2.3")


def test_rtplan_refuses_a_plan_without_strength(tmp_path):
    plan = oblique_plan()
    plan.seed_sk_u = 0.0
    with pytest.raises(PlanError, match="strength"):
        write_rtplan(tmp_path / "RP.dcm", plan)


# --- plans made elsewhere, built here with pydicom alone ------------------------------------------------
def foreign_plan(tmp_path, channels, *, btype="LDR", technique="PERMANENT", source=True, isotope="I-125",
                 model="Model 6711", manufacturer="Oncura", beams=False, name="foreign.dcm"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_PLAN
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RT_PLAN
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    ds.FrameOfReferenceUID = FOR_UID
    ds.RTPlanLabel = "OTHER TPS"
    if btype:
        ds.BrachyTreatmentType = btype
        ds.BrachyTreatmentTechnique = technique
    if beams:
        ds.BeamSequence = Sequence([Dataset()])
    if source:
        src = Dataset()
        src.SourceNumber = 1
        src.SourceIsotopeName = isotope
        src.SourceIsotopeHalfLife = "59.4"
        src.SourceModelID = model
        src.SourceManufacturer = manufacturer
        src.ReferenceAirKermaRate = "0.508"
        ds.SourceSequence = Sequence([src])
    dref = Dataset()
    dref.DoseReferenceNumber = 1
    dref.DoseReferenceType = "TARGET"
    dref.DoseReferenceStructureType = "SITE"
    dref.DoseReferenceDescription = "PTV node"
    dref.TargetPrescriptionDose = "120"
    ds.DoseReferenceSequence = Sequence([dref])
    setup = Dataset()
    setup.ApplicationSetupNumber = 1
    items = []
    for number, (points, extra) in enumerate(channels, start=1):
        ch = Dataset()
        ch.ChannelNumber = number
        ch.ReferencedSourceNumber = 1
        ch.SourceMovementType = "STEPWISE"
        for k, v in extra.items():
            setattr(ch, k, v)
        cps = []
        for i, (pos, weight) in enumerate(points):
            cp = Dataset()
            cp.ControlPointIndex = i
            cp.ControlPoint3DPosition = [f"{v:.3f}" for v in pos]
            cp.CumulativeTimeWeight = "" if weight is None else f"{weight:g}"
            cps.append(cp)
        ch.NumberOfControlPoints = len(cps)
        ch.BrachyControlPointSequence = Sequence(cps)
        items.append(ch)
    setup.ChannelSequence = Sequence(items)
    ds.ApplicationSetupSequence = Sequence([setup])
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _needle_points(entry, axis, depths):
    return [np.asarray(entry, float) + d * np.asarray(axis, float) for d in depths]


def test_one_channel_per_needle_plan_imports_to_the_right_seeds(tmp_path):
    axis = np.array([0.0, 0.6, 0.8])
    entries = [np.array([10.0, -50.0, 20.0]), np.array([15.0, -50.0, 20.0])]
    seed_depths = [[60.0, 52.5, 45.0], [58.0, 50.0]]
    channels = []
    for n, (entry, depths) in enumerate(zip(entries, seed_depths)):
        # afterloader style: the source travels in to the tip (weight 0), dwells at each seed position
        # (two control points, weight steps up), moves on (same weight), ...
        pts = [(entry + 30.0 * axis, 0.0)]
        w = 0.0
        for p in _needle_points(entry, axis, depths):
            pts.append((p, w))
            w += 1.0
            pts.append((p, w))
        channels.append((pts, {"SourceApplicatorNumber": n + 1, "SourceApplicatorID": f"Needle {n + 1}"}))
    path = foreign_plan(tmp_path, channels)
    plan = read_rtplan(path)
    assert (plan.target, plan.prescription_gy, plan.seed_model, plan.seed_sk_u) == ("PTV node", 120.0, "6711", 0.508)
    assert plan.frame_of_reference_uid == FOR_UID
    assert [n.id for n in plan.needles] == ["Needle 1", "Needle 2"] and all(n.hole is None for n in plan.needles)
    assert [s.needle_id for s in plan.seeds] == ["Needle 1"] * 3 + ["Needle 2"] * 2
    expected = np.array([p for e, d in zip(entries, seed_depths) for p in _needle_points(e, axis, d)])
    np.testing.assert_allclose(plan.seed_positions_mm(), expected, atol=1e-3)
    for needle, entry, depths in zip(plan.needles, entries, seed_depths):
        np.testing.assert_allclose(needle.axis, axis, atol=1e-6)  # deepest seed first in the channel
        np.testing.assert_allclose(needle.tip_mm, entry + (depths[0] + 5.0) * axis, atol=1e-3)
    # entries on one template plane, 10 mm outside the shallowest seed
    depths_of_entries = [float(n.entry_mm @ axis) for n in plan.needles]
    assert depths_of_entries[0] == pytest.approx(depths_of_entries[1], abs=1e-6)
    assert depths_of_entries[0] == pytest.approx(float(entries[0] @ axis) + 45.0 - 10.0, abs=1e-3)
    assert any("estimated" in note for note in plan.extra["import_notes"])
    # every seed lies on its needle, between entry and tip
    for s in plan.seeds:
        n = plan.needle(s.needle_id)
        d = n.depth_of(s.position_mm)
        assert 0 < d < n.length_mm
        assert np.linalg.norm(n.point_at_depth(d) - s.position_mm) < 1e-3


def test_single_control_point_per_seed_layout(tmp_path):
    # one control point per seed, cumulative weights 0, 1, 2 (the first seed is where the source starts)
    axis = np.array([1.0, 0.0, 0.0])
    pts = _needle_points([0.0, 0.0, 0.0], axis, [50.0, 44.0, 38.0])
    path = foreign_plan(tmp_path, [([(p, float(w)) for w, p in enumerate(pts)], {})])
    plan = read_rtplan(path)
    np.testing.assert_allclose(plan.seed_positions_mm(), pts, atol=1e-6)
    assert len(plan.needles) == 1 and plan.needles[0].id == "N1"
    np.testing.assert_allclose(plan.needles[0].tip_mm, [55.0, 0.0, 0.0], atol=1e-6)


def test_one_channel_per_seed_without_needle_information(tmp_path):
    seeds = [np.array([1.0, 2.0, 3.0]), np.array([6.0, 2.0, 3.0]), np.array([1.0, 7.5, 3.0])]
    channels = [([(p, 0.0), (p, 1.0)], {}) for p in seeds]
    plan = read_rtplan(foreign_plan(tmp_path, channels))
    np.testing.assert_allclose(plan.seed_positions_mm(), seeds)
    assert len(plan.needles) == 3 and [s.id for s in plan.seeds] == ["S1", "S2", "S3"]
    assert any("direction unknown" in note for note in plan.extra["import_notes"])
    for s in plan.seeds:
        n = plan.needle(s.needle_id)
        assert n.length_mm > 0 and np.linalg.norm(np.cross(s.position_mm - n.entry_mm, n.axis)) < 1e-6


def test_empty_time_weights_mean_every_position_is_a_seed(tmp_path):
    pts = _needle_points([0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [40.0, 33.0])
    plan = read_rtplan(foreign_plan(tmp_path, [([(p, None) for p in pts], {})]))
    np.testing.assert_allclose(plan.seed_positions_mm(), pts)


def test_seed_model_names_are_mapped_or_kept(tmp_path):
    seeds = [([(np.zeros(3), 0.0), (np.zeros(3), 1.0)], {})]
    iai = read_rtplan(foreign_plan(tmp_path, seeds, model="IAI-125", manufacturer="IsoAid LLC", name="a.dcm"))
    other = read_rtplan(foreign_plan(tmp_path, seeds, model="STM1251", manufacturer="Bard", name="b.dcm"))
    assert (iai.seed_model, other.seed_model) == ("IAI-125A", "STM1251")


@pytest.mark.parametrize("kwargs, message", [
    ({"btype": "HDR"}, "HDR"),
    ({"btype": "PDR"}, "PDR"),
    ({"btype": None, "beams": True}, "external-beam"),
    ({"source": False}, "no Source"),
    ({"isotope": "Pd-103"}, "I-125"),
])
def test_unusable_plans_are_refused_with_a_reason(tmp_path, kwargs, message):
    seeds = [([(np.zeros(3), 0.0), (np.zeros(3), 1.0)], {})]
    with pytest.raises(PlanError, match=message):
        read_rtplan(foreign_plan(tmp_path, seeds, **kwargs))


def test_foreign_channel_without_seeds_is_left_out_with_a_note(tmp_path):
    p = np.array([3.0, 4.0, 5.0])
    channels = [([(p, 0.0), (p, 1.0)], {"SourceApplicatorID": "B2"}),
                ([(np.zeros(3), 0.0), (np.ones(3), 0.0)], {"SourceApplicatorID": "B3"})]
    plan = read_rtplan(foreign_plan(tmp_path, channels))
    assert [(n.id, n.hole) for n in plan.needles] == [("N1", "B2")]
    assert any("no seeds" in note for note in plan.extra["import_notes"])


def test_plans_without_channels_or_seeds_are_refused(tmp_path):
    with pytest.raises(PlanError, match="no channels"):
        read_rtplan(foreign_plan(tmp_path, [], name="a.dcm"))
    zero = [([(np.zeros(3), 0.0), (np.ones(3), 0.0)], {})]
    with pytest.raises(PlanError, match="no seed positions"):
        read_rtplan(foreign_plan(tmp_path, zero, name="b.dcm"))


def test_non_plan_files_are_refused(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(PlanError, match="cannot read"):
        read_rtplan(bad)
    ct = Volume(np.zeros((1, 4, 4), np.float32), [0, 0, 0], [1, 1, 1])
    path = write_ct_series(ct, tmp_path / "ct")[0]
    with pytest.raises(PlanError, match="not an RT Plan"):
        read_rtplan(path)


# --- issue #12: prescription naming, seed calibration and implant date ----------------------------------------
def _plan_on_ct(tmp_path):
    """oblique_plan on a small CT with a structure set holding the GTV (ROI 1) and the CTV grown from it (ROI 2)."""
    plan = oblique_plan()
    plan.target = "GTV node"
    ct = Volume(np.zeros((6, 16, 12), np.float32), [-60.0, -100.0, 80.0], [4.0, 5.0, 5.0],
                frame_of_reference_uid=FOR_UID, patient_id="P12", patient_name="Test^Twelve")
    patient = PatientInfo.from_volume(ct)
    write_ct_series(ct, tmp_path / "ct", patient)
    tri = np.array([[-50, -90, 90], [-40, -90, 90], [-45, -80, 90.]])
    rs_uid = "1.2.826.0.1.3680043.8.498.4243"
    write_rtstruct(tmp_path / "RS.dcm", ct, {"GTV node": [tri], "CTV": [tri * 1.01]}, patient,
                   roi_types={"GTV node": "GTV", "CTV": "CTV"}, sop_instance_uid=rs_uid)
    return plan, ct, patient, rs_uid


def test_prescription_texts_name_the_referenced_roi_and_the_target_reads_back(tmp_path):
    plan, ct, patient, rs_uid = _plan_on_ct(tmp_path)
    path, _ = write_rtplan(tmp_path / "RP.dcm", plan, ct, patient, structure_set_sop_uid=rs_uid,
                           target_roi_number=2, target_roi_name="CTV")
    errors, warnings = dciodvfy(path)
    assert errors == [] and all(ONLY_WARNING in w for w in warnings), (errors, warnings)
    ds = pydicom.dcmread(path)
    rs = pydicom.dcmread(tmp_path / "RS.dcm")
    dref = ds.DoseReferenceSequence[0]
    referenced = {int(r.ROINumber): r.ROIName for r in rs.StructureSetROISequence}[int(dref.ReferencedROINumber)]
    assert referenced == "CTV" == dref.DoseReferenceDescription
    for text in (ds.PrescriptionDescription, ds.RTPlanName):
        assert "CTV" in text and "GTV" not in text, text
    back = read_rtplan(path)
    assert back.target == "GTV node" and back.prescription_gy == pytest.approx(plan.prescription_gy)


def test_calibration_date_and_implant_date_round_trip(tmp_path):
    plan, ct, patient, rs_uid = _plan_on_ct(tmp_path)
    factor = math.exp(-math.log(2.0) * 21 / 59.4)  # 21 days of I-125
    plan.seed_sk_u = 0.7 * factor
    plan.extra["source_strength"] = {"calibration_date": "20261103", "calibration_time": "093000",
                                     "implant_date": "20261124", "sk_u_at_calibration": 0.7,
                                     "sk_u_at_implant": plan.seed_sk_u, "decay_factor": factor}
    path, _ = write_rtplan(tmp_path / "RP.dcm", plan, ct, patient, structure_set_sop_uid=rs_uid, target_roi_number=2,
                           target_roi_name="CTV")
    assert dciodvfy(path)[0] == []
    src = pydicom.dcmread(path).SourceSequence[0]
    assert (src.SourceStrengthReferenceDate, src.SourceStrengthReferenceTime) == ("20261103", "093000")
    assert float(src.ReferenceAirKermaRate) == pytest.approx(0.7, rel=1e-12)
    back = read_rtplan(path)
    assert back.seed_sk_u == pytest.approx(plan.seed_sk_u, rel=1e-12)
    assert back.extra["source"]["implant_date"] == "20261124"
    assert back.extra["source"]["decay_factor"] == pytest.approx(factor, rel=1e-12)


def test_decayed_strength_follows_the_i125_half_life():
    from navigator.io.dicom import decayed_strength

    assert decayed_strength(0.6, "20261101", "20261101") == (pytest.approx(0.6), pytest.approx(1.0))
    sk, f = decayed_strength(0.6, "20260101", "20260301")  # 59 days: just under one half-life of 59.4 d
    assert f == pytest.approx(2.0 ** (-59 / 59.4), rel=1e-12) and sk == pytest.approx(0.6 * f, rel=1e-12)
    with pytest.raises(PlanError, match="not a date YYYYMMDD"):
        decayed_strength(0.6, "2026-01-01", "20260301")
    with pytest.raises(PlanError, match="days from the seed calibration date"):
        decayed_strength(0.6, "20260101", "20280101")


def test_without_a_calibration_date_the_reference_is_the_planning_time_and_says_so(tmp_path):
    plan = oblique_plan()
    path, _ = write_rtplan(tmp_path / "RP.dcm", plan)
    ds = pydicom.dcmread(path)
    src = ds.SourceSequence[0]
    assert (src.SourceStrengthReferenceDate, src.SourceStrengthReferenceTime) == (ds.RTPlanDate, ds.RTPlanTime)
    assert "no seed calibration date was given" in ds.RTPlanDescription
    assert read_rtplan(path).seed_sk_u == pytest.approx(plan.seed_sk_u)


def test_rtplan_series_number_and_description_above_the_ct(tmp_path):
    plan, ct, patient, rs_uid = _plan_on_ct(tmp_path)
    patient.series_number = 7
    path, _ = write_rtplan(tmp_path / "RP.dcm", plan, ct, patient, structure_set_sop_uid=rs_uid)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(ds.SeriesNumber) == 10 and ds.SeriesDescription == "navigator pre-plan: I-125 seeds"
