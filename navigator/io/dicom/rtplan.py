"""RT Plan (brachy, permanent I-125 LDR) export and import.

Layout we write (PS3.3 C.8.8.15 RT Brachy Application Setups; no private attributes):

- one Source (I-125, half-life 59.4 d, ReferenceAirKermaRate = seed strength in U = uGy m^2 h^-1 at
  SourceStrengthReferenceDate/Time: the seeds' calibration when it is known, else the planning date and time,
  which the plan description then says; SourceModelID / SourceManufacturer / SourceDescription of the model);
- one Application Setup (the guide template: TemplateNumber/Type/Name) holding
- one FIXED Channel per seed, ChannelNumber = seed index + 1, AfterloaderChannelID = seed id (<= 16 chars),
  two control points at the seed position with cumulative time weights 0 and 1;
  the seed's needle is the channel's applicator: SourceApplicatorNumber = needle index + 1,
  SourceApplicatorName = needle id, SourceApplicatorID = template hole, SourceApplicatorType RIGID,
  SourceApplicatorLength = ChannelLength = needle tip depth |tip - entry| (mm);
  ControlPointOrientation = needle axis (entry -> tip, unit LPS), ControlPointRelativePosition = distance
  of the seed back from the channel's distal end (tip depth - seed depth), so that
  ``entry = position - (ChannelLength - relative_position) * axis`` and ``tip = entry + length * axis``:
  the plan's needles read back exactly, from standard attributes only;
- a needle without seeds is a channel with two control points (entry, tip) and zero time weights;
- prescription: DoseReferenceSequence (TARGET, TargetPrescriptionDose Gy, ReferencedROINumber = the CTV of the
  structure set when there is one) and PrescriptionDescription, both naming the ROI referenced (the CTV);
- RTPlanDescription, one fact a line: the planning CT series, the plan's target (GTV) when the prescription is
  to its CTV, the implant date (the dose is computed with the strength decayed to it) and what the source
  strength's reference date is;
- ChannelTotalTime = the source's mean life (T1/2 / ln 2) in s: a permanent implant delivers its total dose
  as if at the initial rate for one mean life;
- a revision (the intraoperative re-plan, ``plan.extra["revision"]``) references the plan it revises through
  ReferencedRTPlanSequence (RTPlanRelationship PREDECESSOR: the plan used in deriving this one) and says so in
  a description line ``Revision N of RT Plan <SOP Instance UID>``; ``read_rtplan`` reads both back.

Import (``read_rtplan``) also takes plans from other planning systems: one channel per seed (two control
points at one position) or one channel per needle (control points along the needle; a seed wherever the
cumulative time weight steps up). Where a file does not carry needle geometry, it is estimated and the
estimate named in ``plan.extra["import_notes"]`` (see ``_estimate_needles``).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from navigator.io.dicom._base import (RT_PLAN_STORAGE, RT_STRUCTURE_SET_STORAGE, PatientInfo, _base_dataset,
                          _ds, _now, _prechecked, _ref, _save, _uid)
from navigator.errors import PlanError
from navigator.core.volume import Volume
from navigator.core.plan import Needle, Plan, PlannedSeed

I125_HALF_LIFE_D = 59.4
# Seed models we know: what goes into the Source Sequence. Active length: TG-43U1 L = 0.3 cm for both.
SEED_MODELS = {
    "6711": {"manufacturer": "GE Healthcare (Amersham/Oncura)", "model_id": "6711",
             "description": "I-125 OncoSeed 6711, 4.5 x 0.8 mm", "active_length_mm": 3.0},
    "IAI-125A": {"manufacturer": "IsoAid", "model_id": "IAI-125A",
                 "description": "I-125 Advantage IAI-125A, 4.5 x 0.8 mm", "active_length_mm": 3.0},
}
DEFAULT_TEMPLATE = {"number": 1, "type": "GUIDE TEMPLATE", "name": "5 mm grid"}
# Imports without needle geometry: the tip lies this far beyond the deepest seed (a seed is dropped a few
# mm short of the needle tip), and the template plane this far outside the shallowest seed (seeds >= 10 mm
# below the skin, the template on the skin).
TIP_MARGIN_MM = 5.0
ENTRY_STANDOFF_MM = 10.0
_SAME_POSITION_MM = 0.01
_CT_SERIES_TEXT = "Planned on CT series "
_TARGET_TEXT = "Target: "
_IMPLANT_TEXT = "Implant date: "
_REVISION_TEXT = "Revision "
# Another planning system's SourceApplicatorID: a hole label in its own style ("C7", "Aa 3", "D-4", "E3.5" for a
# half-hole); wider than our own ids (core.template.hole_rc), which this importer must not reject.
_FOREIGN_HOLE_RE = re.compile(r"^[A-Za-z]{1,2}\s?-?\d{1,2}(\.5)?$")


# --- export ---------------------------------------------------------------------------------------------
@_prechecked
def write_rtplan(path, plan: Plan, ct: Volume | None = None, patient: PatientInfo | None = None,
                 template: dict | None = None, reference_date: str | None = None, label: str = "",
                 structure_set_sop_uid: str | None = None, target_roi_number: int | None = None,
                 reference_time: str | None = None, sop_instance_uid: str | None = None,
                 needle_roi_numbers: dict | None = None, series_number: int | None = None,
                 uid_seed: str | None = None, target_roi_name: str | None = None,
                 series_description: str = "navigator pre-plan: I-125 seeds",
                 referenced_rtplan_uid: str | None = None) -> tuple[Path, str]:
    """Write ``plan`` as an RT Plan (BrachyTreatmentTechnique PERMANENT, BrachyTreatmentType LDR).

    Seed strength (see ``_source_strength``): ``plan.extra["source_strength"]`` (written by ``navigator plan``)
    gives the calibration date/time and the strength then; else ``reference_date``/``reference_time`` is when the
    seeds had ``plan.seed_sk_u``; else the strength is written as of now (the planning date and time), and the plan
    description says that no calibration date was given.
    ``template``: ``{"number", "type", "name"}`` of the guide template (default ``plan.extra["template"]``
    or a 5 mm grid). ``structure_set_sop_uid``: the RT Structure Set the plan was made on; with it the plan's
    geometry is PATIENT (DICOM then requires the reference), without it TREATMENT_DEVICE.
    ``target_roi_number``/``target_roi_name``: the ROI of that structure set the prescription is to (a VOLUME;
    else a SITE), e.g. the CTV; every prescription text names it (default name: ``plan.target``).
    ``needle_roi_numbers``: ``{needle_id: ROI number}`` of the needle tracks (BRACHY_CHANNEL ROIs) in that
    structure set; each channel then references its needle's ROI (else the reference is left empty).
    ``series_number``: default 3 above the CT's (``PatientInfo.series_number_above``).
    ``uid_seed``: derive generated UIDs from this string (reproducible simulator output).
    ``referenced_rtplan_uid``: the SOP Instance UID of the plan this one revises (default
    ``plan.extra["based_on_sop_instance_uid"]`` of a revision): referenced as its PREDECESSOR.
    Returns (path, SOP Instance UID) — give the UID to ``write_rtdose(plan_sop_uid=...)``.
    """
    if not plan.seeds and not plan.needles:
        raise PlanError("plan has no needles and no seeds; nothing to export as an RT Plan")
    if not plan.seed_sk_u or plan.seed_sk_u <= 0:
        raise PlanError(f"plan seed strength {plan.seed_sk_u} U is not > 0; set the seed strength before export")
    if patient is None:
        patient = PatientInfo.from_volume(ct) if ct is not None else \
            PatientInfo(frame_of_reference_uid=plan.frame_of_reference_uid)
    strength = _source_strength(plan, reference_date, reference_time)
    roi_name = str(target_roi_name or plan.target)
    number = series_number if series_number is not None else patient.series_number_above(3)
    sop_uid = sop_instance_uid or _uid(uid_seed, "rtplan")
    ds = _base_dataset(RT_PLAN_STORAGE, sop_uid, patient, "RTPLAN", _uid(uid_seed, f"series/{number}"),
                       number, series_description)
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = plan.frame_of_reference_uid or patient.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = 1
    _general_plan(ds, plan, ct, label, structure_set_sop_uid, roi_name, strength)
    predecessor = referenced_rtplan_uid or (plan.extra.get("based_on_sop_instance_uid") or None)
    if predecessor:
        ds.ReferencedRTPlanSequence = Sequence([_predecessor(str(predecessor))])
    ds.DoseReferenceSequence = Sequence([_dose_reference(plan, roi_name, target_roi_number, structure_set_sop_uid,
                                                         uid_seed)])
    ds.PrescriptionDescription = f"{plan.prescription_gy:g} Gy to {roi_name} (total dose of the permanent implant)"
    ds.FractionGroupSequence = Sequence([_fraction_group()])
    # RT Brachy Application Setups
    ds.BrachyTreatmentTechnique = "PERMANENT"
    ds.BrachyTreatmentType = "LDR"
    machine = Dataset()
    machine.TreatmentMachineName = "seed applicator"
    machine.Manufacturer = ""
    ds.TreatmentMachineSequence = Sequence([machine])
    ds.SourceSequence = Sequence([_source_item(plan.seed_model, strength)])
    template = dict(template or plan.extra.get("template") or DEFAULT_TEMPLATE)
    ds.ApplicationSetupSequence = Sequence([_application_setup(plan, template, structure_set_sop_uid,
                                                               needle_roi_numbers)])
    ds.ApprovalStatus = "UNAPPROVED"  # a physicist approves the plan in the planning system of record
    return _save(ds, path), sop_uid


def decayed_strength(sk_u_at_reference: float, reference_date: str, implant_date: str) -> tuple[float, float]:
    """(strength at the implant, decay factor) of I-125 seeds that had ``sk_u_at_reference`` U on
    ``reference_date`` (YYYYMMDD): decayed over the whole days to ``implant_date`` (the implant taken at the
    reference's time of day), exp(-ln 2 * days / 59.4 d). PlanError for a date that is not YYYYMMDD or an implant
    more than a year from the reference."""
    days = (_date(implant_date, "implant date") - _date(reference_date, "calibration date")).days
    if abs(days) > 366:
        raise PlanError(f"the implant date {implant_date} is {days} days from the seed calibration date "
                        f"{reference_date}; I-125 seeds are implanted within weeks of calibration; check the dates")
    factor = math.exp(-math.log(2.0) * days / I125_HALF_LIFE_D)
    return float(sk_u_at_reference) * factor, factor


def _date(value: str, what: str) -> _dt.date:
    try:
        return _dt.datetime.strptime(str(value), "%Y%m%d").date()
    except ValueError:
        raise PlanError(f"{what} {value!r} is not a date YYYYMMDD (e.g. 20261201); give it as 8 digits") from None


def _source_strength(plan: Plan, reference_date: str | None, reference_time: str | None) -> dict:
    """{"sk_u", "date", "time", "text"}: the strength written as ReferenceAirKermaRate, the SourceStrengthReference
    Date/Time it holds at, and a sentence for the plan description saying what that date is."""
    info = dict(plan.extra.get("source_strength") or {})
    if info.get("calibration_date"):
        date, time = str(info["calibration_date"]), str(info.get("calibration_time") or "120000")
        sk = float(info.get("sk_u_at_calibration") or plan.seed_sk_u)
        text = (f"Source strength {sk:.4f} U at the seed calibration {date} {time}; implanted on "
                f"{info.get('implant_date') or date}: dose computed with {plan.seed_sk_u:.4f} U")
    elif reference_date:
        date, time, sk = str(reference_date), str(reference_time or "120000"), float(plan.seed_sk_u)
        text = f"Source strength {sk:.4f} U at {date} {time}"
    else:
        date, time = _now()
        sk = float(plan.seed_sk_u)
        text = (f"Source strength {sk:.4f} U as given at planning; no seed calibration date was given, so the "
                f"reference date/time {date} {time} is the planning date and time, not a calibration")
    if not re.fullmatch(r"\d{8}", date):
        raise PlanError(f"reference_date {date!r} is not YYYYMMDD; give the seed calibration date")
    if not re.fullmatch(r"\d{6}(\.\d{1,6})?", time):
        raise PlanError(f"reference_time {time!r} is not HHMMSS; give the seed calibration time")
    return {"sk_u": sk, "date": date, "time": time, "text": text,
            "implant_date": str(info.get("implant_date") or "") if info.get("calibration_date") else ""}


def _general_plan(ds: Dataset, plan: Plan, ct: Volume | None, label: str, structure_set_sop_uid: str | None,
                  roi_name: str, strength: dict) -> None:
    """RT General Plan. No attribute of the RT Plan IOD names the planning CT series without listing its
    instances, the plan's target (the GTV, when the prescription is to its CTV) or the implant date: fixed
    sentences, one a line, keep them readable for people and for ``read_rtplan``."""
    date, time = _now()
    ds.RTPlanLabel = (label or "I125 LDR")[:16]
    ds.RTPlanName = f"I-125 seeds to {roi_name}"[:64]
    lines = []
    ct_series = plan.ct_series_uid or (ct.series_uid if ct is not None else "")
    if ct_series:
        lines.append(f"{_CT_SERIES_TEXT}{ct_series}")
    if plan.target and plan.target != roi_name:
        lines.append(f"{_TARGET_TEXT}{plan.target}; the prescription is to {roi_name}")
    if strength["implant_date"]:
        lines.append(f"{_IMPLANT_TEXT}{strength['implant_date']}")
    if plan.extra.get("revision") and plan.extra.get("based_on_sop_instance_uid"):
        lines.append(f"{_REVISION_TEXT}{int(plan.extra['revision'])} of RT Plan {plan.extra['based_on_sop_instance_uid']}"
                     " (re-planned on the needles as found)")
    lines.append(strength["text"])
    ds.RTPlanDescription = "\n".join(lines)
    ds.RTPlanDate = date
    ds.RTPlanTime = time
    if structure_set_sop_uid:
        ds.RTPlanGeometry = "PATIENT"
        ds.ReferencedStructureSetSequence = Sequence([_ref(RT_STRUCTURE_SET_STORAGE, structure_set_sop_uid)])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"


def _predecessor(sop_instance_uid: str) -> Dataset:
    """An item of ReferencedRTPlanSequence: the plan this one was derived from."""
    item = _ref(RT_PLAN_STORAGE, sop_instance_uid)
    item.RTPlanRelationship = "PREDECESSOR"
    return item


def rtplan_identity(path) -> dict:
    """What a revision needs of the RT Plan it revises: ``sop_instance_uid``, ``series_number`` (or None),
    ``frame_of_reference_uid``, ``patient_id`` and ``study_instance_uid``. PlanError when it is not an RT Plan."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise PlanError(f"{path}: cannot read as DICOM ({exc}); give the RTPLAN.dcm of the plan") from None
    if ds.get("Modality") != "RTPLAN" and ds.get("SOPClassUID") != RT_PLAN_STORAGE:
        raise PlanError(f"{path}: not an RT Plan (Modality {ds.get('Modality')!r}); give the RTPLAN.dcm of the plan")
    series = ds.get("SeriesNumber")
    return {"sop_instance_uid": str(ds.get("SOPInstanceUID", "")), "series_number": None if series in (None, "")
            else int(series), "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
            "patient_id": str(ds.get("PatientID", "") or ""), "study_instance_uid": str(ds.get("StudyInstanceUID", ""))}


def _dose_reference(plan: Plan, roi_name: str, target_roi_number: int | None, structure_set_sop_uid: str | None,
                    uid_seed: str | None) -> Dataset:
    """RT Prescription: one TARGET dose reference, described by the name of the ROI it references."""
    dref = Dataset()
    dref.DoseReferenceNumber = 1
    dref.DoseReferenceUID = _uid(uid_seed, "rtplan/doseref")
    if target_roi_number is not None and structure_set_sop_uid:
        dref.DoseReferenceStructureType = "VOLUME"
        dref.ReferencedROINumber = int(target_roi_number)
    else:
        dref.DoseReferenceStructureType = "SITE"
    dref.DoseReferenceDescription = roi_name[:64]
    dref.DoseReferenceType = "TARGET"
    dref.TargetPrescriptionDose = _ds(plan.prescription_gy)
    return dref


def _fraction_group() -> Dataset:
    """RT Fraction Scheme: one "fraction", the permanent implant."""
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = 1
    fg.NumberOfBeams = 0
    fg.NumberOfBrachyApplicationSetups = 1
    rba = Dataset()
    rba.ReferencedBrachyApplicationSetupNumber = 1
    fg.ReferencedBrachyApplicationSetupSequence = Sequence([rba])
    return fg


def _source_item(seed_model: str, strength: dict) -> Dataset:
    model = SEED_MODELS.get(seed_model, {"manufacturer": "", "model_id": str(seed_model)[:16],
                                         "description": f"I-125 seed {seed_model}"[:64], "active_length_mm": 3.0})
    src = Dataset()
    src.SourceNumber = 1
    src.SourceModelID = str(model["model_id"])[:16]
    src.SourceDescription = str(model["description"])[:64]
    src.SourceType = "LINE"
    if model["manufacturer"]:
        src.SourceManufacturer = model["manufacturer"]
    src.ActiveSourceLength = _ds(model["active_length_mm"])
    src.SourceIsotopeName = "I-125"
    src.SourceIsotopeHalfLife = _ds(I125_HALF_LIFE_D)
    src.SourceStrengthUnits = "AIR_KERMA_RATE"
    src.ReferenceAirKermaRate = _ds(strength["sk_u"])  # uGy h^-1 at 1 m == uGy m^2 h^-1 == U
    src.SourceStrength = _ds(strength["sk_u"])
    src.SourceStrengthReferenceDate = strength["date"]
    src.SourceStrengthReferenceTime = strength["time"]
    return src


def _application_setup(plan: Plan, template: dict, structure_set_sop_uid: str | None,
                       needle_roi_numbers: dict | None) -> Dataset:
    """The guide template's setup: a channel per seed, then one per needle without seeds."""
    mean_life_s = I125_HALF_LIFE_D / math.log(2) * 86400.0
    setup = Dataset()
    setup.ApplicationSetupType = "INTERSTITIAL"  # see the report: no defined term fits a template implant
    setup.ApplicationSetupNumber = 1
    setup.ApplicationSetupName = "CT-guided template implant"
    setup.TemplateNumber = int(template.get("number", 1))
    setup.TemplateType = str(template.get("type", ""))[:16]
    setup.TemplateName = str(template.get("name", ""))[:64]
    # the total reference air kerma the implanted seeds deliver: their strength at the implant over a mean life
    setup.TotalReferenceAirKerma = _ds(len(plan.seeds) * plan.seed_sk_u * mean_life_s / 3600.0)
    needle_number = {n.id: i + 1 for i, n in enumerate(plan.needles)}
    roi_numbers = dict(needle_roi_numbers or {}) if structure_set_sop_uid else {}
    by_id = {n.id: n for n in plan.needles}
    channels = []
    for s_index, seed in enumerate(plan.seeds):
        if seed.needle_id not in by_id:
            raise PlanError(f"seed {seed.id} names needle {seed.needle_id!r}, which the plan does not have")
        needle = by_id[seed.needle_id]
        rel = needle.length_mm - needle.depth_of(seed.position_mm)
        ch = _channel(s_index + 1, needle, needle_number[needle.id], mean_life_s,
                      [(seed.position_mm, rel, 0.0), (seed.position_mm, rel, 1.0)], roi_numbers.get(needle.id))
        if len(seed.id) <= 16:
            ch.AfterloaderChannelID = seed.id
        channels.append(ch)
    with_seeds = {s.needle_id for s in plan.seeds}
    for needle in plan.needles:
        if needle.id not in with_seeds:
            channels.append(_channel(len(channels) + 1, needle, needle_number[needle.id], 0.0,
                                     [(needle.entry_mm, needle.length_mm, 0.0), (needle.tip_mm, 0.0, 0.0)],
                                     roi_numbers.get(needle.id)))
    setup.ChannelSequence = Sequence(channels)
    return setup


def _channel(number: int, needle: Needle, needle_number: int, total_time_s: float, points,
             roi_number: int | None = None) -> Dataset:
    """One channel along ``needle``; ``points`` = [(position_mm, relative_position_mm, cumulative_weight)]."""
    ch = Dataset()
    ch.ChannelNumber = number
    ch.ChannelLength = _ds(needle.length_mm)
    ch.ChannelTotalTime = _ds(total_time_s)
    ch.SourceMovementType = "FIXED"
    ch.SourceApplicatorNumber = needle_number
    ch.SourceApplicatorID = (needle.hole or "")[:16]
    ch.SourceApplicatorType = "RIGID"
    ch.SourceApplicatorName = str(needle.id)[:64]
    ch.SourceApplicatorLength = _ds(needle.length_mm)
    ch.ReferencedROINumber = int(roi_number) if roi_number is not None else None
    ch.TransferTubeNumber = None
    ch.ReferencedSourceNumber = 1
    ch.NumberOfControlPoints = len(points)
    ch.FinalCumulativeTimeWeight = _ds(points[-1][2])
    axis = [float(v) for v in needle.axis]
    cps = []
    for i, (pos, rel, weight) in enumerate(points):
        cp = Dataset()
        cp.ControlPointIndex = i
        cp.ControlPointRelativePosition = _ds(0.0 if abs(rel) < 1e-9 else rel)
        cp.ControlPoint3DPosition = [_ds(v) for v in pos]
        cp.ControlPointOrientation = axis
        cp.CumulativeTimeWeight = _ds(weight)
        cps.append(cp)
    ch.BrachyControlPointSequence = Sequence(cps)
    return ch


# --- import ---------------------------------------------------------------------------------------------
def _f(ds, keyword, default=None):
    v = ds.get(keyword)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _seed_model_of(src) -> str:
    model_id = str(src.get("SourceModelID", "") or "").strip()
    text = " ".join(str(src.get(k, "") or "") for k in ("SourceModelID", "SourceDescription",
                                                          "SourceManufacturer")).upper()
    if "6711" in text or "ONCOSEED" in text:
        return "6711"
    if "IAI-125" in text or "IAI125" in text or ("ADVANTAGE" in text and "ISOAID" in text):
        return "IAI-125A"
    return model_id or str(src.get("SourceDescription", "") or "unknown")


def _dwell_points(channel) -> list[int]:
    """Indices of control points where a seed sits (see the module docstring for the rules)."""
    cps = list(channel.get("BrachyControlPointSequence", []))
    pos = [np.array([float(v) for v in cp.ControlPoint3DPosition]) if cp.get("ControlPoint3DPosition")
           else None for cp in cps]
    weights = [_f(cp, "CumulativeTimeWeight") for cp in cps]
    if all(w is None for w in weights):
        # Time weights left empty (type 2): every distinct position is a seed.
        out = []
        for i, p in enumerate(pos):
            if p is not None and not any(np.linalg.norm(p - pos[j]) <= _SAME_POSITION_MM for j in out):
                out.append(i)
        return out
    w = [0.0 if x is None else x for x in weights]
    out, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and pos[i] is not None and pos[j + 1] is not None \
                and np.linalg.norm(pos[j + 1] - pos[i]) <= _SAME_POSITION_MM:
            j += 1
        if pos[i] is not None:
            if j > i:  # a dwell: the source stays while the weight grows
                if w[j] > w[i]:
                    out.append(i)
            else:  # one control point per position: the weight step into it (the first: out of it)
                before = w[i - 1] if i > 0 else 0.0
                after = w[i + 1] if i + 1 < len(cps) else w[i]
                if w[i] > before or (i == 0 and after > w[i]):
                    out.append(i)
        i = j + 1
    return out


def read_rtplan(path, frame_of_reference_uid: str | None = None) -> Plan:
    """Read an RT Plan of a permanent I-125 seed implant (ours or another planning system's) into a Plan.

    Raises PlanError for anything that is not a permanent/LDR brachytherapy plan with sources and channels.
    ``frame_of_reference_uid``: the frame the caller expects; a plan in another frame is refused, and a plan
    without one is taken to be in it. ``seed_sk_u`` is the strength the dose is computed with: the Reference Air
    Kerma Rate, decayed to the implant date where our plan description names one (``Implant date: YYYYMMDD``).
    """
    path = Path(path)
    ds, sources, notes = _open_rtplan(path)
    channels = [ch for setup in ds.ApplicationSetupSequence for ch in setup.get("ChannelSequence", [])]
    if not channels:
        raise PlanError(f"{path}: RT Plan has no channels (no seed positions); re-export it with its seeds")
    src, sk_u = _main_source(path, channels, sources, notes)
    needles_info = _needles_info(_group_channels(channels))
    if not any(n["seeds"] for n in needles_info):
        raise PlanError(f"{path}: RT Plan channels hold no seed positions (no time weight anywhere); "
                        "re-export the plan with its seeds")
    dropped = [n["id"] for n in needles_info if n["exact"] is None and not n["seeds"]]
    if dropped:
        notes.append(f"needle(s) {dropped} have no seeds and no geometry in the file; left out")
        needles_info = [n for n in needles_info if n["id"] not in dropped]
    _estimate_needles(needles_info, notes)
    needles, seeds = _needles_and_seeds(needles_info)
    target, rx = _prescription(ds, notes)

    file_for = str(ds.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference_uid and file_for and file_for != frame_of_reference_uid:
        raise PlanError(f"{path}: RT Plan is in frame of reference {file_for}, not the expected "
                        f"{frame_of_reference_uid}; register the plan's CT to this CT first")
    described = _described(ds)
    extra = _read_extra(ds, src, notes)
    if described.get("implant_date") and extra["source"]["reference_date"]:
        sk_u, factor = decayed_strength(sk_u, extra["source"]["reference_date"], described["implant_date"])
        extra["source"].update({"implant_date": described["implant_date"], "decay_factor": factor})
    if described.get("revision"):
        extra["revision"], extra["based_on_sop_instance_uid"] = described["revision"], described["based_on"]
    return Plan(frame_of_reference_uid=file_for or (frame_of_reference_uid or ""),
                ct_series_uid=described.get("ct_series", ""), target=described.get("target") or target,
                prescription_gy=float(rx), seed_model=_seed_model_of(src), seed_sk_u=float(sk_u),
                needles=needles, seeds=seeds, extra=extra)


def _open_rtplan(path: Path):
    """(dataset, {source number: source item}, notes) of a permanent I-125 seed plan; PlanError otherwise."""
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise PlanError(f"{path}: cannot read as DICOM ({exc}); give an RT Plan file") from None
    if ds.get("Modality") != "RTPLAN" and ds.get("SOPClassUID") != RT_PLAN_STORAGE:
        raise PlanError(f"{path}: not an RT Plan (Modality {ds.get('Modality')!r}); give the RTPLAN of the implant")
    if "BeamSequence" in ds or "IonBeamSequence" in ds:
        raise PlanError(f"{path}: an external-beam RT Plan (it has beams); give a permanent seed-implant "
                        "brachytherapy plan")
    btype = str(ds.get("BrachyTreatmentType", "") or "").upper()
    technique = str(ds.get("BrachyTreatmentTechnique", "") or "").upper()
    if btype in ("HDR", "PDR", "MDR"):
        raise PlanError(f"{path}: a {btype} brachytherapy plan (afterloader dwell times); this software "
                        "plans permanent LDR I-125 seed implants — give the seed plan")
    if not ds.get("ApplicationSetupSequence"):
        raise PlanError(f"{path}: RT Plan has no brachytherapy Application Setup; not a seed-implant plan")
    sources = {int(s.SourceNumber): s for s in ds.get("SourceSequence", []) if "SourceNumber" in s}
    if not sources:
        raise PlanError(f"{path}: RT Plan has no Source Sequence (no seed strength); re-export it with its sources")
    notes = []
    for s in sources.values():
        iso = str(s.get("SourceIsotopeName", "") or "").upper().replace(" ", "")
        if iso and iso not in ("I-125", "I125", "125I", "IODINE-125", "IODINE125"):
            raise PlanError(f"{path}: source isotope {s.SourceIsotopeName!r}; this software computes I-125 "
                            "seed dose only — give an I-125 plan")
    if technique and technique not in ("PERMANENT", "INTERSTITIAL"):
        notes.append(f"BrachyTreatmentTechnique {technique} read as a permanent interstitial implant")
    return ds, sources, notes


def _main_source(path: Path, channels, sources: dict, notes: list):
    """(source item, its strength in U): the source most channels use."""
    used = [int(ch.get("ReferencedSourceNumber", 0) or 0) for ch in channels]
    main = max(set(used), key=used.count) if any(u in sources for u in used) else min(sources)
    src = sources.get(main, sources[min(sources)])
    sk_u = _f(src, "ReferenceAirKermaRate")
    if not sk_u and str(src.get("SourceStrengthUnits", "")) == "AIR_KERMA_RATE":
        sk_u = _f(src, "SourceStrength")
    if not sk_u or sk_u <= 0:
        raise PlanError(f"{path}: source {main} has no Reference Air Kerma Rate (seed strength in U); "
                        "re-export the plan with the seed strength")
    strengths = {n: _f(s, "ReferenceAirKermaRate") for n, s in sources.items()}
    if len({round(v or 0, 4) for v in strengths.values()}) > 1:
        notes.append(f"sources have different strengths {strengths} U; seed_sk_u is source {main}'s")
    return src, sk_u


def _group_channels(channels) -> dict:
    """Channels grouped into needles: by applicator number, else applicator id, else one needle per channel."""
    groups: dict = {}
    for ch in channels:
        if ch.get("SourceApplicatorNumber") not in (None, ""):
            key = ("applicator", int(ch.SourceApplicatorNumber))
        elif str(ch.get("SourceApplicatorID", "") or "").strip():
            key = ("id", str(ch.SourceApplicatorID).strip())
        else:
            key = ("channel", int(ch.ChannelNumber))
        groups.setdefault(key, []).append(ch)
    return groups


def _needles_info(groups: dict) -> list[dict]:
    """Per needle: {"id", "hole", "channels", "seeds" [(id or None, pos, channel, control point)], "exact"
    (entry, tip) or None}."""
    needles_info = []
    used_ids: set = set()
    for g_index, (key, chs) in enumerate(groups.items(), start=1):
        first = chs[0]
        app_id = str(first.get("SourceApplicatorID", "") or "").strip()
        name = str(first.get("SourceApplicatorName", "") or "").strip()
        if name:  # our layout: the name is the needle id, the applicator id its template hole
            hole = app_id or None
            nid = name
        else:  # elsewhere the applicator id may be a hole ("C4") or a needle label ("Needle 3")
            hole = app_id if app_id and _FOREIGN_HOLE_RE.match(app_id) else None
            nid = (app_id if app_id and hole is None else "") or f"N{key[1] if key[0] != 'id' else g_index}"
        while nid in used_ids:
            nid = f"{nid}'"
        used_ids.add(nid)
        seeds = []
        for ch in chs:
            cps = list(ch.get("BrachyControlPointSequence", []))
            dwell = _dwell_points(ch)
            for i in dwell:
                # A seed id only where the channel is the seed (one channel per seed).
                sid = str(ch.get("AfterloaderChannelID", "") or "").strip() if len(dwell) == 1 else ""
                seeds.append((sid or None, np.array([float(v) for v in cps[i].ControlPoint3DPosition]), ch, i))
        needles_info.append({"id": nid, "hole": hole, "channels": chs, "seeds": seeds,
                             "exact": _exact_geometry(chs)})
    return needles_info


def _needles_and_seeds(needles_info: list[dict]) -> tuple[list[Needle], list[PlannedSeed]]:
    """The plan's needles (exact or estimated geometry) and seeds (file ids where unique, else S<n>)."""
    needles, seeds = [], []
    seed_ids: set = set()
    counter = 0
    for n in needles_info:
        entry, tip = n["exact"] if n["exact"] is not None else n["estimate"]
        needles.append(Needle(id=n["id"], entry_mm=entry, tip_mm=tip, hole=n["hole"]))
        for sid, pos, _, _ in n["seeds"]:
            counter += 1
            if not sid or sid in seed_ids:
                sid = f"S{counter}"
                while sid in seed_ids:
                    sid = f"{sid}'"
            seed_ids.add(sid)
            seeds.append(PlannedSeed(id=sid, needle_id=n["id"], position_mm=pos))
    return needles, seeds


def _prescription(ds, notes: list) -> tuple[str, float]:
    """(the TARGET dose reference's description, prescription Gy); 0 Gy with a note where there is none."""
    target, rx = "", None
    for d in ds.get("DoseReferenceSequence", []):
        if str(d.get("DoseReferenceType", "")) == "TARGET":
            target = str(d.get("DoseReferenceDescription", "") or "")
            rx = _f(d, "TargetPrescriptionDose") or _f(d, "DeliveryMaximumDose")
            break
    if rx is None:
        for fg in ds.get("FractionGroupSequence", []):
            for rb in fg.get("ReferencedBrachyApplicationSetupSequence", []):
                rx = rx or _f(rb, "BrachyApplicationSetupDose")
    if rx is None:
        rx = 0.0
        notes.append("no prescription dose in the plan; prescription_gy set to 0")
    return target, rx


def _described(ds) -> dict:
    """What our RTPlanDescription sentences say: ``ct_series``, ``target`` (the plan's target when the
    prescription is to its CTV), ``implant_date``; absent keys where a line is missing (other systems' plans)."""
    out = {}
    for line in str(ds.get("RTPlanDescription", "") or "").splitlines():
        m = re.match(re.escape(_CT_SERIES_TEXT) + r"([0-9.]+)", line)
        if m:
            out["ct_series"] = m.group(1)
        if line.startswith(_TARGET_TEXT) and "; the prescription is to " in line:
            out["target"] = line[len(_TARGET_TEXT):].rsplit("; the prescription is to ", 1)[0]
        m = re.fullmatch(re.escape(_IMPLANT_TEXT) + r"(\d{8})", line.strip())
        if m:
            out["implant_date"] = m.group(1)
        m = re.match(re.escape(_REVISION_TEXT) + r"(\d+) of RT Plan ([0-9.]+)", line)
        if m:
            out["revision"], out["based_on"] = int(m.group(1)), m.group(2)
    return out


def _read_extra(ds, src, notes: list) -> dict:
    """``plan.extra`` of an imported plan: its SOP Instance UID, the source, the template, import notes."""
    setup = ds.ApplicationSetupSequence[0]
    extra = {"rtplan_sop_uid": str(ds.SOPInstanceUID),
             "source": {"model_id": str(src.get("SourceModelID", "") or ""),
                        "manufacturer": str(src.get("SourceManufacturer", "") or ""),
                        "isotope": str(src.get("SourceIsotopeName", "") or ""),
                        "half_life_d": _f(src, "SourceIsotopeHalfLife"),
                        "reference_air_kerma_rate_u": _f(src, "ReferenceAirKermaRate"),
                        "reference_date": str(src.get("SourceStrengthReferenceDate", "") or ""),
                        "reference_time": str(src.get("SourceStrengthReferenceTime", "") or "")}}
    if "TemplateNumber" in setup or "TemplateName" in setup:
        extra["template"] = {"number": int(setup.get("TemplateNumber") or 0),
                             "type": str(setup.get("TemplateType", "") or ""),
                             "name": str(setup.get("TemplateName", "") or "")}
    refs = [{"sop_instance_uid": str(r.get("ReferencedSOPInstanceUID", "") or ""),
             "relationship": str(r.get("RTPlanRelationship", "") or "")}
            for r in ds.get("ReferencedRTPlanSequence", []) or []]
    if refs:
        extra["referenced_rtplans"] = refs
    if notes:
        extra["import_notes"] = notes
    return extra


def _exact_geometry(channels):
    """(entry, tip) from ChannelLength + ControlPointOrientation + ControlPointRelativePosition, else None."""
    entries, axes, lengths = [], [], []
    for ch in channels:
        length = _f(ch, "ChannelLength")
        app_len = _f(ch, "SourceApplicatorLength", length)
        if length is None or length <= 0:
            return None
        for cp in ch.get("BrachyControlPointSequence", []):
            rel = _f(cp, "ControlPointRelativePosition")
            ori = cp.get("ControlPointOrientation")
            if rel is None or not ori or not cp.get("ControlPoint3DPosition"):
                return None
            axis = np.array([float(v) for v in ori])
            if abs(np.linalg.norm(axis) - 1.0) > 1e-3:
                return None
            p = np.array([float(v) for v in cp.ControlPoint3DPosition])
            entries.append(p - (length - rel) * axis)
            axes.append(axis)
        lengths.append(app_len)
    if not entries:
        return None
    entries, axes = np.array(entries), np.array(axes)
    # Channels of one applicator must agree; otherwise the attributes mean something else in this file.
    if np.ptp(entries, axis=0).max() > 0.1 or np.ptp(axes, axis=0).max() > 1e-3 or np.ptp(lengths) > 0.01:
        return None
    axis = axes.mean(axis=0)
    axis /= np.linalg.norm(axis)
    entry = entries.mean(axis=0)
    return entry, entry + float(lengths[0]) * axis


def _estimate_needles(needles_info, notes) -> None:
    """Needle entry/tip for needles the file gives no geometry for (sets ``n["estimate"]``).

    Axis: line fit (SVD) through the needle's seeds, pointed deeper by, in order of trust: the source
    orientation, the relative positions (smaller = nearer the channel's distal end), the control-point order
    (first = deepest: the source is delivered from the tip back). Single-seed needles take their orientation,
    else the mean axis of the other needles, else +P (anterior entry). Tip: deepest seed + TIP_MARGIN_MM.
    Entry: on the template plane, perpendicular to the mean axis, ENTRY_STANDOFF_MM outside the shallowest seed.
    """
    todo = [n for n in needles_info if n["exact"] is None]
    if not todo:
        return
    for n in todo:
        pts = np.array([s[1] for s in n["seeds"]]) if n["seeds"] else np.zeros((0, 3))
        oris = [np.array([float(v) for v in s[2].BrachyControlPointSequence[s[3]].ControlPointOrientation])
                for s in n["seeds"] if s[2].BrachyControlPointSequence[s[3]].get("ControlPointOrientation")]
        hint = np.mean(oris, axis=0) if oris else None
        axis = None
        if len(pts) >= 2 and np.ptp(pts, axis=0).max() > 0.5:
            c = pts.mean(axis=0)
            axis = np.linalg.svd(pts - c)[2][0]
            if hint is not None and np.linalg.norm(hint) > 0:
                axis = axis if np.dot(axis, hint) >= 0 else -axis
            else:
                rels = [_f(s[2].BrachyControlPointSequence[s[3]], "ControlPointRelativePosition") for s in n["seeds"]]
                if all(r is not None for r in rels) and np.ptp(rels) > 0.1:
                    deepest = int(np.argmin(rels))
                else:
                    deepest = 0
                shallow = int(np.argmax([np.linalg.norm(p - pts[deepest]) for p in pts]))
                axis = axis if np.dot(pts[deepest] - pts[shallow], axis) >= 0 else -axis
        elif hint is not None and np.linalg.norm(hint) > 0:
            axis = hint / np.linalg.norm(hint)
        n["axis"] = axis
    known = [n["axis"] for n in todo if n["axis"] is not None]
    mean_axis = np.mean(known, axis=0) if known else np.array([0.0, 1.0, 0.0])
    mean_axis /= np.linalg.norm(mean_axis)
    for n in todo:
        if n["axis"] is None:
            n["axis"] = mean_axis
            notes.append(f"needle {n['id']}: direction unknown (one seed, no orientation); "
                         f"took {np.round(mean_axis, 3).tolist()}")
    all_pts = np.array([s[1] for n in todo for s in n["seeds"]])
    plane = float(np.min(all_pts @ mean_axis)) - ENTRY_STANDOFF_MM
    for n in todo:
        axis = n["axis"]
        pts = np.array([s[1] for s in n["seeds"]])
        depth = pts @ axis
        tip = pts[int(np.argmax(depth))] + TIP_MARGIN_MM * axis
        shallow = pts[int(np.argmin(depth))]
        cos = float(np.dot(axis, mean_axis))
        if cos > 0.2:
            entry = shallow - (float(shallow @ mean_axis) - plane) / cos * axis
        else:
            entry = shallow - ENTRY_STANDOFF_MM * axis
        n["estimate"] = (entry, tip)
    notes.append(f"needle geometry estimated for {len(todo)} needle(s): tip = deepest seed + {TIP_MARGIN_MM} mm, "
                 f"entry on a template plane {ENTRY_STANDOFF_MM} mm outside the shallowest seed")
