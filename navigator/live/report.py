"""``GET /api/report``: report.html of the session so far, on the report kit (``navigator.report.html``):
state, series, needle checks (one row per needle of the latest), the re-plans (metrics, who made and approved
them), delivery with its projected dose, post-implant metrics and the decisions taken (with their users). The needle and post-implant pages with pictures are served beside it
(``/api/checks/latest/html``, ``/api/postimplant/latest/html``)."""

from __future__ import annotations

import json
from pathlib import Path

from navigator.live import steps
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
    replans = _replans(live)
    if replans:
        parts.append(h.section("Re-plans on the needles as found", h.table(
            replans, ["re-plan", "on check", "made by", "seeds", "D90 Gy pre-plan / as placed / re-plan",
                      "V100 % pre-plan / as placed / re-plan", "approved by", "delivered as"]),
            h.note("each re-plan's pages: DIR/replan/<n>/replan.html; the latest at /api/replan/latest/html")))
    d = live.delivery.to_json()
    rows = [("released", d["released"]), ("planned", d["planned"]), ("reconciled", d["reconciled"]),
            ("running", d["running"])]
    p = d.get("projected")
    if p:
        rows += [("projected D90 (Gy), released + still planned", h.num(p["D90_gy"])),
                 ("projected V100 (%)", h.num(p["V100_pct"])),
                 ("D90 of the seeds released (Gy)", h.num(p["D90_released_gy"]))]
    parts.append(h.section(f"Delivery ({d['name']})", h.table(rows, ["", ""])))
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


def _replans(live) -> list[tuple]:
    """One row per re-plan (journal ``replan_written``): its metrics and who approved it for which delivery."""
    rows = []
    for rp in list(live.facts.replans):
        ap = next((a for a in live.facts.approvals if a["replan"] == rp["n"]), None)
        try:
            r = steps.read_json(Path(rp["dir"]) / "replan.json")
        except (OSError, ValueError):
            continue
        ms = [r.get(k) or {} for k in ("metrics_preplan", "metrics_as_placed", "metrics_replan")]
        rows.append((rp["n"], rp["check"], rp.get("user") or "—", r.get("seeds"),
                     " / ".join(_one(m.get("D90_gy")) for m in ms), " / ".join(_one(m.get("V100_pct")) for m in ms),
                     ap["user"] if ap else "not approved", ap["name"] if ap else "—"))
    return rows


def _one(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def _entries(path) -> list[dict]:
    """The journal's complete lines (the service appends while this reads; a line in writing is left out)."""
    raw = path.read_bytes()
    return [json.loads(line) for line in raw[: raw.rfind(b"\n") + 1].splitlines() if line]
