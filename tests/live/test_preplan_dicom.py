"""The pre-plan by DICOM: a new session (no --plan) receives the pre-plan CT, its RT Structure Set and a brachy
RT Plan referencing that CT (sent by storescu, the RT Plan first); once all three are there the plan is loaded
(``DIR/preplan/plan.json``) and the session is in state ``preplan_loaded``."""

from __future__ import annotations

from navigator.core.plan import Plan
from tests.live.conftest import Service, journal


def test_preplan_arrives_by_dicom(case, users_file, tmp_path):
    from navigator.io.dicom import load_ct_series, write_rtplan

    ct = load_ct_series(case["preplan_ct"])
    rtplan, _ = write_rtplan(tmp_path / "RTPLAN.dcm", case["plan_obj"], ct)
    svc = Service(tmp_path / "session", "--users", str(users_file), quiet_s=0.6)
    try:
        phil = svc.login("phil")
        assert svc.call("GET", "/api/session", token=phil)[1]["state"] == "new"
        for part in (rtplan, case["rs"], case["preplan_ct"]):
            assert svc.storescu(part).returncode == 0
        state = svc.wait_for(lambda: (lambda s: s if s["state"] == "preplan_loaded" else None)(
            svc.call("GET", "/api/session", token=phil)[1]), 60, "the pre-plan by DICOM")
        assert state["patient_id"] == case["patient_id"]
        assert state["prescription_gy"] == case["plan_obj"].prescription_gy
        rows = svc.call("GET", "/api/series", token=phil)[1]
        assert sorted(r["modality"] for r in rows) == ["CT", "RTPLAN", "RTSTRUCT"]
        assert {r["purpose"] for r in rows} == {"preplan"}
        loaded = Plan.load(tmp_path / "session" / "preplan" / "plan.json")
        assert [n.id for n in loaded.needles] == [n.id for n in case["plan_obj"].needles]
        assert len(loaded.seeds) == len(case["plan_obj"].seeds)
        source = [e["data"] for e in journal(tmp_path / "session") if e["kind"] == "preplan_loaded_from"]
        assert source[-1]["source"] == "DICOM"
    finally:
        assert svc.stop() == 0
