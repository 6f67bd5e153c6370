"""``GET /api/report``: report.html of the session so far, on the report kit (``navigator.report.html``):
state, series, needle checks (one row per needle of the latest), delivery, post-implant metrics and the
decisions taken (with their users). The needle and post-implant pages with pictures are served beside it
(``/api/checks/latest/html``, ``/api/postimplant/latest/html``)."""

from __future__ import annotations

import json

from navigator.report import html as h


def session_report(live) -> str:
    s = live.session_json()
    parts = [h.section("Session", h.table([("state", s["state"]), ("next step", s["next_step"]),
                                           ("patient id", s["patient_id"] or "—"),
                                           ("prescription (Gy)", s["prescription_gy"])], ["", ""]))]
    parts.append(h.section("Series received", h.table(
        [(r["series_uid"], r["modality"], r["instances"], r["purpose"] or "—", r["received_at"],
          r.get("error") or r.get("reason") or "") for r in live.series_list()],
        ["series", "modality", "instances", "purpose", "received", "note"])))
    check = live.latest_check()
    if check is not None:
        rows = [(n["id"], h.num(n["tip_error_mm"]), h.num(n["lateral_mm"]), h.num(n["depth_mm"], "{:+.1f}"),
                 h.num(n["angle_deg"]), h.flag(n["within_tolerance"]), h.num(n["d90_change_gy"], "{:+.2f}"),
                 n["advice"]) for n in check["needles"]]
        parts.append(h.section(f"Latest needle check ({check['scan']} scan, check {check['check']})", h.table(
            rows, ["needle", "tip error mm", "lateral mm", "depth mm", "angle deg", "within tolerance",
                   "D90 change Gy", "advice"], bad_rows=[not n["within_tolerance"] for n in check["needles"]]),
            h.note("pictures: /api/checks/latest/html")))
    d = live.delivery.to_json()
    parts.append(h.section("Delivery", h.table([("released", d["released"]), ("planned", d["planned"]),
                                                ("reconciled", d["reconciled"]), ("running", d["running"])],
                                               ["", ""])))
    post = live.latest_postimplant()
    if post is not None:
        parts.append(h.section("Post-implant", h.metrics_table(post["metrics"]),
                               h.paragraph(f"{len(post['seeds'])} seeds found, {len(post['cold_spots'])} cold "
                                           f"spots, {len(post['supplementary']['seeds'])} supplementary seeds "
                                           "proposed"), h.note("pictures: /api/postimplant/latest/html")))
    decisions = [(e["t"], e["data"].get("user"), e["data"].get("action"),
                  ", ".join(f"{k}={v}" for k, v in e["data"].items() if k not in ("user", "role", "action")))
                 for e in _entries(live.dir / "session.jsonl") if e["kind"] == "decision"]
    parts.append(h.section("Decisions", h.table(decisions, ["time (UTC)", "user", "action", "details"])))
    return h.page("navigator session report", *parts)


def _entries(path) -> list[dict]:
    """The journal's complete lines (the service appends while this reads; a line in writing is left out)."""
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].splitlines() if line]
