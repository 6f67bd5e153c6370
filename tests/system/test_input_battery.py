"""The bad-input battery (issue #18): every class of broken input, generated here, against the commands.

Each case runs the real command line in-process and asserts the contract: exit 2, a message on stderr that
names the problem (and no traceback), and an output folder left exactly as an earlier run left it. Cases that
are unusual but readable (a compressed series, a folder of two series with the series named, open contours)
must give a correct read with their warnings instead.

Classes: plan.json (every invariant broken once), options (zero, negative, huge, NaN, infinite, not a number),
DICOM (truncated pixels, missing tags, wrong values, unreadable compressed pixels, other patient, mixed series,
gaps, empty folders), contours (open, beyond the CT), output folders (all or nothing), strict JSON. Plus
property-based tests (Hypothesis) on the plan model and on the option checker.

The case count is asserted at the end (``test_battery_size``): 100 cases.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navigator.cli import main
from navigator.commands._common import number
from navigator.core.models import PlanFile, plan_json_schema
from navigator.errors import PlanError
from simulators.phantoms.cases import demo_implant, make_patient
from simulators.phantoms.writer import write_patient
from tests.conftest import REPO, demo_plan

CASES: list[str] = []  # ids of every battery case, for test_battery_size


# --- the case: a small synthetic patient as real DICOM, its plan, and an "earlier run" in --out ----------------
@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    patient = make_patient("neck", 5, matrix=(96, 96), n_slices=24)
    written = write_patient(patient, root / "case")
    needles, seeds, _ = demo_implant(patient, n_needles=6, seeds_per_needle=2, spacing_mm=10.0)
    plan = demo_plan(patient, needles, seeds, seeds_per_needle=2, cols=3)
    d = plan.to_dict()
    d["template"] = {"rows": 2, "cols": 5}
    plan_path = root / "plan.json"
    plan_path.write_text(json.dumps(d))
    seeds_csv = root / "seeds.csv"
    seeds_csv.write_text("x_mm,y_mm,z_mm\n" + "\n".join(",".join(f"{v:.3f}" for v in s.position_mm)
                                                         for s in plan.seeds) + "\n")
    return dict(root=root, patient=patient, ct=written.ct_dir, rs=written.rtstruct_path, plan=d,
                plan_path=plan_path, seeds_csv=seeds_csv)


def earlier_run(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """``folder`` as an earlier run left it: each output present with known bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(f"earlier run: {n}\n".encode())
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], phrase: str, out: Path | None = None, before: dict | None = None) -> str:
    """Run ``argv``; assert exit 2, ``phrase`` in the message, no traceback, ``out`` untouched."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert phrase.lower() in err.lower(), err
    assert "Traceback" not in err
    if out is not None:
        assert snapshot(out) == before, "the output folder changed"
        assert not list(out.parent.glob(f".{out.name}.partial-*")), "a staging folder was left behind"
    return err


# --- plan.json: every invariant broken once -------------------------------------------------------------------
def _seed_off_needle(d):
    d["seeds"][0]["position_mm"][0] += 100.0  # 100 mm off its needle (outside the body)


def _seed_beyond_tip(d):
    n = d["needles"][0]
    e, t = np.array(n["entry_mm"]), np.array(n["tip_mm"])
    u = (t - e) / np.linalg.norm(t - e)
    d["seeds"][0]["position_mm"] = (t + 30.0 * u).tolist()


def _seed_above_entry(d):
    n = d["needles"][0]
    e, t = np.array(n["entry_mm"]), np.array(n["tip_mm"])
    u = (t - e) / np.linalg.norm(t - e)
    d["seeds"][0]["position_mm"] = (e - 5.0 * u).tolist()


def _seeds_overlap(d):
    a, b = d["seeds"][0], d["seeds"][1]
    n = next(x for x in d["needles"] if x["id"] == a["needle_id"])
    e, t = np.array(n["entry_mm"]), np.array(n["tip_mm"])
    u = (t - e) / np.linalg.norm(t - e)
    b["needle_id"] = a["needle_id"]
    b["position_mm"] = (np.array(a["position_mm"]) + 1.0 * u).tolist()


def _dup(key):
    def f(d):
        d[key][1]["id"] = d[key][0]["id"]
    return f


def _set(path, value):
    def f(d):
        obj = d
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value
    return f


def _drop(key):
    def f(d):
        del d[key]
    return f


PLAN_CASES = {
    "seed 100 mm off its needle": (_seed_off_needle, "from the axis of its needle"),
    "seed 30 mm beyond its tip": (_seed_beyond_tip, "beyond the needle's tip"),
    "seed above the entry": (_seed_above_entry, "above the needle's entry"),
    "two seeds overlap": (_seeds_overlap, "mm apart"),
    "duplicated seed id": (_dup("seeds"), "more than once"),
    "duplicated needle id": (_dup("needles"), "more than once"),
    "seed on an unknown needle": (_set(("seeds", 0, "needle_id"), "N99"), "does not have"),
    "NaN prescription": (_set(("prescription_gy",), float("nan")), "NaN is not a JSON number"),
    "infinite coordinate": (_set(("needles", 0, "tip_mm", 1), float("inf")), "Infinity is not a JSON number"),
    "negative strength": (_set(("seed_sk_u",), -0.5), "seed_sk_u"),
    "absurd prescription": (_set(("prescription_gy",), 1e6), "prescription_gy"),
    "hole outside the template": (_set(("needles", 0, "hole"), "Z9"), "outside the plan's"),
    "hole not a hole id": (_set(("needles", 0, "hole"), "12"), "not a template hole"),
    "needle of zero length": (lambda d: d["needles"][0].update(tip_mm=list(d["needles"][0]["entry_mm"])),
                              "from its entry"),
    "no frame of reference": (_drop("frame_of_reference_uid"), "frame_of_reference_uid"),
    "frame of reference not a UID": (_set(("frame_of_reference_uid",), "scanner 3"), "frame_of_reference_uid"),
    "no seeds": (_set(("seeds",), []), "seeds"),
    "no needles": (_set(("needles",), []), "needles"),
    "point of two values": (_set(("seeds", 0, "position_mm"), [1.0, 2.0]), "seeds[0].position_mm"),
    "text for a number": (_set(("prescription_gy",), "lots"), "prescription_gy"),
    "empty needle id": (_set(("needles", 0, "id"), ""), "needles[0].id"),
}
CASES += [f"plan: {k}" for k in PLAN_CASES] + ["plan: not JSON", "plan: a list", "plan: NaN token",
                                                "plan: file missing"]


def _broken_plan(case, tmp_path, name) -> Path:
    d = copy.deepcopy(case["plan"])
    PLAN_CASES[name][0](d)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))  # NaN/Infinity written as the tokens other tools would choke on
    return p


@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_broken_plan_refused_by_needles(case, tmp_path, capsys, name):
    plan = _broken_plan(case, tmp_path, name)
    out = tmp_path / "out"
    before = earlier_run(out, ("needles.json", "needles.html", "registration.json"))
    refused(capsys, ["needles", "--plan", str(plan), "--preplan-ct", str(case["ct"]), "--ct", str(case["ct"]),
                     "--out", str(out)], PLAN_CASES[name][1], out, before)


@pytest.fixture()
def silent_device():
    """A loopback listener that never answers: any connection attempt shows up as a pending accept."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    yield srv
    srv.close()


def _connected(srv) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize("name", ["seed 100 mm off its needle", "seed 30 mm beyond its tip", "duplicated seed id",
                                  "two seeds overlap", "hole outside the template"])
def test_broken_plan_never_reaches_the_device(case, tmp_path, capsys, silent_device, name):
    plan = _broken_plan(case, tmp_path, name)
    port = silent_device.getsockname()[1]
    journal = tmp_path / "j" / "session.jsonl"
    journal.parent.mkdir()
    refused(capsys, ["deliver", "--plan", str(plan), "--device", f"socket://127.0.0.1:{port}",
                     "--journal", str(journal)], PLAN_CASES[name][1])
    assert not _connected(silent_device), "the device was contacted for a plan that fails its checks"
    assert not (tmp_path / "j" / "delivery.json").exists()


CASES += [f"deliver: {n}" for n in ["seed 100 mm off its needle", "seed 30 mm beyond its tip",
                                    "duplicated seed id", "two seeds overlap", "hole outside the template"]]


@pytest.mark.parametrize("text, phrase", [("{\"target\": ", "not JSON"), ("[1, 2]", "dictionary"),
                                          ("NaN", "not a JSON number"), (None, "plan file not found")])
def test_unreadable_plan_file(case, tmp_path, capsys, text, phrase):
    p = tmp_path / "plan.json"
    if text is not None:
        p.write_text(text)
    out = tmp_path / "out"
    before = earlier_run(out, ("needles.json",))
    refused(capsys, ["needles", "--plan", str(p), "--preplan-ct", str(case["ct"]), "--ct", str(case["ct"]),
                     "--out", str(out)], phrase, out, before)


# --- options: zero, negative, huge, NaN, infinite, text --------------------------------------------------------
def _opt_cases():
    base = {
        "plan": ["plan", "--ct", "CT", "--structures", "RS", "--target", "GTV", "--rx-gy", "140",
                 "--seed-model", "6711", "--seed-sk-u", "0.6", "--out", "OUT"],
        "register": ["register", "--fixed", "CT", "--moving", "CT", "--out", "OUT"],
        "needles": ["needles", "--plan", "PLAN", "--preplan-ct", "CT", "--ct", "CT", "--out", "OUT"],
        "postimplant": ["postimplant", "--plan", "PLAN", "--preplan-ct", "CT", "--ct", "CT", "--out", "OUT"],
        "dose": ["dose", "--seeds", "SEEDS", "--model", "6711", "--seed-sk-u", "0.6", "--out", "OUT"],
        "rehearse": ["rehearse", "--out", "OUT"],
        "serve": ["serve", "--session", "OUT"],
        "tg43": ["tg43", "--model", "6711", "--along", "0", "--away", "1"],
    }
    rows = [
        ("plan", "--dose-grid-mm", ["0", "-1", "1e6", "nan", "inf", "fine"]),
        ("plan", "--rx-gy", ["0", "-120", "1e9", "nan"]),
        ("plan", "--margin-mm", ["-1", "100", "nan"]),
        ("plan", "--seed-sk-u", ["0", "-0.6", "1e3", "nan"]),
        ("register", "--region-half-mm", ["-5", "0", "1e6", "nan"]),
        ("register", "--metal-hu", ["-100", "inf"]),
        ("needles", "--tolerance-mm", ["0", "-2", "1e3", "nan"]),
        ("postimplant", "--expected-seeds", ["0", "-3", "2.5", "1e9"]),
        ("postimplant", "--cold-spot-min-cc", ["0", "-1", "nan"]),
        ("dose", "--grid-mm", ["0", "-1", "1e6", "nan"]),
        ("rehearse", "--seed", ["-1", "1.5", "x"]),
        ("serve", "--http-port", ["-1", "70000"]),
        ("serve", "--series-quiet-s", ["0", "nan", "-5"]),
        ("tg43", "--sk-u", ["0", "nan"]),
    ]
    for cmd, opt, values in rows:
        for v in values:
            yield f"option: {cmd} {opt} {v}", base[cmd], opt, v


OPTION_CASES = list(_opt_cases())
CASES += [c[0] for c in OPTION_CASES]


@pytest.mark.parametrize("cid, argv, option, value", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_value(case, tmp_path, capsys, cid, argv, option, value):
    out = tmp_path / "out"
    before = earlier_run(out, ("result.json",))
    subst = {"CT": str(case["ct"]), "RS": str(case["rs"]), "PLAN": str(case["plan_path"]),
             "SEEDS": str(case["seeds_csv"]), "OUT": str(out)}
    full = [subst.get(a, a) for a in argv] + [f"{option}={value}"]
    if argv[0] == "tg43" and option == "--sk-u":
        full = [a for a in full if a not in ("--seed-sk-u", "0.6")]
    err = refused(capsys, full, option, out, before)
    assert "give a" in err  # says what to give


# --- DICOM: broken series ---------------------------------------------------------------------------------------
def _copy_ct(case, tmp_path) -> Path:
    dst = tmp_path / "ct"
    shutil.copytree(case["ct"], dst)
    return dst


def _files(ct: Path) -> list[Path]:
    return sorted(p for p in ct.iterdir() if p.is_file())


def _truncate_pixels(ct):
    f = _files(ct)[5]
    f.write_bytes(f.read_bytes()[:-3000])


def _drop_tag(keyword):
    def f(ct):
        p = _files(ct)[3]
        ds = pydicom.dcmread(p)
        delattr(ds, keyword)
        ds.save_as(p)
    return f


def _bad_value(ct):
    p = _files(ct)[4]
    ds = pydicom.dcmread(p)
    ds.PixelSpacing = [0.0, 0.0]
    ds.save_as(p)


def _unreadable_jpeg2000(ct):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    p = _files(ct)[2]
    ds = pydicom.dcmread(p)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])  # a JPEG 2000 header, then nothing
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds["PixelData"].VR = "OB"
    ds.save_as(p, enforce_file_format=True)


def _other_patient(ct):
    p = _files(ct)[6]
    ds = pydicom.dcmread(p)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(p)


def _gap(ct):
    _files(ct)[10].unlink()


def _empty(ct):
    for p in _files(ct):
        p.unlink()


def _not_dicom(ct):
    for p in _files(ct):
        p.write_text("this is not DICOM\n")


def _mixed_modality(ct):
    p = _files(ct)[7]
    ds = pydicom.dcmread(p)
    ds.Modality = "MR"
    ds.save_as(p)


DICOM_CASES = {
    "truncated pixel data": (_truncate_pixels, "pixel"),
    "ImagePositionPatient missing": (_drop_tag("ImagePositionPatient"), "ImagePositionPatient"),
    "PixelSpacing missing": (_drop_tag("PixelSpacing"), "PixelSpacing"),
    "PixelSpacing zero": (_bad_value, "spacing"),
    "unreadable JPEG 2000 pixels": (_unreadable_jpeg2000, "--moving"),
    "a slice of another patient": (_other_patient, "patient"),
    "a slice missing": (_gap, "slice"),
    "empty folder": (_empty, "--moving"),
    "no DICOM at all": (_not_dicom, "--moving"),
    "an MR slice in the CT": (_mixed_modality, "MR"),
}
CASES += [f"dicom: {k}" for k in DICOM_CASES]


@pytest.mark.parametrize("name", list(DICOM_CASES))
def test_broken_ct_refused(case, tmp_path, capsys, name):
    ct = _copy_ct(case, tmp_path)
    DICOM_CASES[name][0](ct)
    out = tmp_path / "out"
    before = earlier_run(out, ("registration.json",))
    refused(capsys, ["register", "--fixed", str(case["ct"]), "--moving", str(ct), "--out", str(out)],
            DICOM_CASES[name][1], out, before)


def test_other_patients_scan_refused(case, tmp_path, capsys):
    ct = _copy_ct(case, tmp_path)
    for p in _files(ct):
        ds = pydicom.dcmread(p)
        ds.PatientID = "SOMEONE-ELSE"
        ds.save_as(p)
    out = tmp_path / "out"
    before = earlier_run(out, ("registration.json",))
    refused(capsys, ["register", "--fixed", str(case["ct"]), "--moving", str(ct), "--out", str(out)],
            "patient id", out, before)


def _two_series(case, tmp_path) -> tuple[Path, str]:
    ct = _copy_ct(case, tmp_path)
    uid = "1.2.826.0.1.3680043.9.7777.1"
    for p in _files(case["ct"]):
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(ct / f"second_{p.name}")
    return ct, uid


def test_two_series_named_by_the_option_the_message_gives(case, tmp_path, capsys):
    ct, uid = _two_series(case, tmp_path)
    out = tmp_path / "out"
    before = earlier_run(out, ("dose.json", "RTDOSE.dcm"))
    err = refused(capsys, ["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6",
                           "--ct", str(ct), "--out", str(out)], "--ct-series-uid", out, before)
    assert uid in err
    rc = main(["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6", "--ct", str(ct),
               "--ct-series-uid", uid, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((out / "dose.json").read_text())["seeds"] == len(case["plan"]["seeds"])


def test_rle_compressed_series_reads_the_same(case, tmp_path, capsys):
    from pydicom.uid import RLELossless

    ct = _copy_ct(case, tmp_path)
    for p in _files(ct):
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    outs = {}
    for name, folder in (("plain", case["ct"]), ("rle", ct)):
        out = tmp_path / name
        assert main(["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6",
                     "--ct", str(folder), "--structures", str(case["rs"]), "--target", "GTV", "--rx-gy", "140",
                     "--out", str(out)]) == 0, capsys.readouterr().err
        outs[name] = json.loads((out / "dose.json").read_text())["metrics"]
    assert outs["plain"] == outs["rle"]


CASES += ["dicom: other patient's scan", "dicom: two series, option named", "dicom: RLE series read"]


# --- contours -------------------------------------------------------------------------------------------------------
def _edit_rs(case, tmp_path, edit) -> Path:
    ds = pydicom.dcmread(case["rs"])
    edit(ds)
    p = tmp_path / "RS.dcm"
    ds.save_as(p)
    return p


def _roi_contours(ds, name):
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == name)
    return next(rc for rc in ds.ROIContourSequence if int(rc.ReferencedROINumber) == num).ContourSequence


def _open_contours(ds):
    seq = _roi_contours(ds, "GTV")
    seq[0].ContourGeometricType = "OPEN_PLANAR"
    two = copy.deepcopy(seq[1])
    two.ContourData = list(two.ContourData)[:6]
    two.NumberOfContourPoints = 2
    seq.append(two)


def test_open_and_two_point_contours_are_warned_not_dropped_silently(case, tmp_path, capsys):
    rs = _edit_rs(case, tmp_path, _open_contours)
    out = tmp_path / "out"
    rc = main(["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6", "--ct",
               str(case["ct"]), "--structures", str(rs), "--target", "GTV", "--rx-gy", "140", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    warnings = json.loads((out / "dose.json").read_text())["warnings"]
    assert any("GTV" in w and "2 contour(s)" in w for w in warnings), warnings
    assert "warning: structure 'GTV': 2 contour(s)" in err


def _shift_target_beyond(case):
    def edit(ds):
        z_top = max(float(c.ContourData[2]) for c in _roi_contours(ds, "GTV"))
        ct_top = case["patient"].ct.origin_mm[2] + (case["patient"].ct.array.shape[0] - 1) * \
            abs(case["patient"].ct.spacing_mm[2])
        for c in _roi_contours(ds, "GTV"):
            pts = np.array(c.ContourData, dtype=float).reshape(-1, 3)
            pts[:, 2] += (ct_top - z_top) + 8.0  # the node's top 8 mm beyond the scanned range
            c.ContourData = [f"{v:.2f}" for v in pts.ravel()]
    return edit


def test_target_beyond_the_ct_is_refused_for_planning_and_warned_for_dose(case, tmp_path, capsys):
    rs = _edit_rs(case, tmp_path, _shift_target_beyond(case))
    out = tmp_path / "plan"
    before = earlier_run(out, ("plan.json", "RTPLAN.dcm", "RTDOSE.dcm", "RTSTRUCT.dcm", "plan.html"))
    refused(capsys, ["plan", "--ct", str(case["ct"]), "--structures", str(rs), "--target", "GTV", "--rx-gy", "140",
                     "--seed-model", "6711", "--seed-sk-u", "0.6", "--out", str(out)],
            "beyond the CT's scanned volume", out, before)
    dose_out = tmp_path / "dose"
    rc = main(["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6", "--ct",
               str(case["ct"]), "--structures", str(rs), "--target", "GTV", "--rx-gy", "140", "--out", str(dose_out)])
    assert rc == 0
    assert any("beyond the CT" in w for w in json.loads((dose_out / "dose.json").read_text())["warnings"])


CASES += ["contours: open and 2-point", "contours: target beyond the CT (plan)", "contours: beyond the CT (dose)"]


# --- output folders and strict JSON --------------------------------------------------------------------------------
def test_success_replaces_every_output_of_the_earlier_run(case, tmp_path, capsys):
    out = tmp_path / "out"
    earlier_run(out, ("dose.json", "RTDOSE.dcm", "notes.txt"))
    assert main(["dose", "--seeds", str(case["seeds_csv"]), "--model", "6711", "--seed-sk-u", "0.6",
                 "--out", str(out)]) == 0
    files = snapshot(out)
    assert files["notes.txt"] == b"earlier run: notes.txt\n"  # not ours: kept
    assert json.loads(files["dose.json"])["seeds"] == len(case["plan"]["seeds"])
    assert files["RTDOSE.dcm"][128:132] == b"DICM"


def test_json_outputs_are_strict():
    from navigator.io.files import dumps

    text = dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("nan"), "d": np.array([1.0, np.nan])})
    assert json.loads(text, parse_constant=lambda t: pytest.fail(f"token {t}")) == \
        {"a": None, "b": [1.0, None], "c": None, "d": [1.0, None]}


CASES += ["outputs: success replaces the earlier run", "outputs: strict JSON"]


# --- the published schema and property-based tests --------------------------------------------------------------
def test_published_schema_is_current_and_accepts_a_plan(case):
    import jsonschema
    published = json.loads((REPO / "docs" / "plan.schema.json").read_text())
    # what the schema says (every object's properties and required keys), not how this pydantic version spells
    # it: the floors' pydantic words some constraints differently
    assert _shape(published) == _shape(plan_json_schema()), ("docs/plan.schema.json is stale: regenerate it with `python -c "
                                             "\"import json; from navigator.core.models import plan_json_schema; "
                                             "print(json.dumps(plan_json_schema(), indent=2))\" > docs/plan.schema.json`")
    jsonschema.Draft202012Validator(published).validate(case["plan"])
    bad = copy.deepcopy(case["plan"])
    bad["seed_sk_u"] = -1
    assert list(jsonschema.Draft202012Validator(published).iter_errors(bad))


def _shape(schema: dict) -> dict:
    objects = {"": schema, **schema.get("$defs", {})}
    return {name: (sorted(o.get("properties", {})), sorted(o.get("required", []))) for name, o in objects.items()}


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 11), dx=finite, dy=finite, dz=finite)
def test_model_accepts_exactly_the_seeds_on_their_needle(case, k, dx, dy, dz):
    """Move one seed anywhere: the model accepts it iff it stays on its needle, inside it, clear of the others."""
    d = copy.deepcopy(case["plan"])
    s = d["seeds"][k]
    s["position_mm"] = (np.array(s["position_mm"]) + [dx, dy, dz]).tolist()
    n = next(x for x in d["needles"] if x["id"] == s["needle_id"])
    e, t, p = (np.array(v, dtype=float) for v in (n["entry_mm"], n["tip_mm"], s["position_mm"]))
    u = (t - e) / np.linalg.norm(t - e)
    depth = float(np.dot(p - e, u))
    off = float(np.linalg.norm(p - e - depth * u))
    others = [float(np.dot(np.array(o["position_mm"]) - e, u)) for o in d["seeds"]
              if o["needle_id"] == s["needle_id"] and o["id"] != s["id"]]
    ok = (off <= 0.5 and -0.5 <= depth <= np.linalg.norm(t - e) + 0.5 and all(abs(depth - o) >= 4.0 for o in others)
          and np.all(np.abs(p) <= 5000))
    try:
        PlanFile.model_validate(d)
        accepted = True
    except Exception:
        accepted = False
    margin = min(abs(off - 0.5), *(abs(abs(depth - o) - 4.0) for o in others)) if others else abs(off - 0.5)
    if margin > 1e-6:  # away from the boundaries, where float rounding decides
        assert accepted == ok, (off, depth, others)


@settings(max_examples=300, deadline=None)
@given(lo=st.floats(-100, 100), span=st.floats(0.1, 1000), above=st.booleans(),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)))
def test_option_checker_accepts_exactly_the_range(lo, span, above, value):
    import argparse

    hi = lo + span
    parse = number(lo, hi, "mm", above=above)
    text = value if isinstance(value, str) else repr(value)
    try:
        expected = float(text)
    except ValueError:
        expected = None
    ok = expected is not None and math.isfinite(expected) and (expected > lo if above else expected >= lo) \
        and expected <= hi
    try:
        got = parse(text)
    except argparse.ArgumentTypeError as exc:
        assert not ok, (text, str(exc))
        assert "give a number" in str(exc)
    else:
        assert ok and got == expected


def test_plan_model_errors_name_the_field():
    with pytest.raises(PlanError, match=r"seeds\[0\]\.position_mm"):
        from navigator.core.plan import Plan

        Plan.from_dict({"frame_of_reference_uid": "1.2.3", "target": "GTV", "prescription_gy": 140,
                        "seed_model": "6711", "seed_sk_u": 0.6,
                        "needles": [{"id": "N1", "entry_mm": [0, 0, 0], "tip_mm": [0, 0, 50]}],
                        "seeds": [{"id": "S1", "needle_id": "N1", "position_mm": [0, 0]}]}, "plan.json")


CASES += ["schema: published and current", "property: seeds on their needle", "property: option ranges",
          "model: errors name the field"]


def test_battery_size():
    assert len(CASES) == len(set(CASES)) == 100, len(CASES)
