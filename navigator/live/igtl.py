"""OpenIGTLink server for 3D Slicer (live-session.md, "OpenIGTLink"): the plan's seeds, the seeds found (or
released), each found needle as a transform, and the status, in RAS millimetres of the pre-plan frame.

- ``POINT`` ``PlannedSeeds``: the seeds of the plan in force (the pre-plan, or the re-plan a physicist approved:
  a revision lies in the pre-plan frame); ``POINT`` ``Seeds``: the seeds of the latest post-implant CT (mapped
  back to the pre-plan frame through its registration), else the seeds released so far at the positions of the
  plan each was delivered from.
- ``TRANSFORM`` ``Needle_<id>``: translation = the found tip; third rotation column = the unit direction from
  the tip towards the entry (mapped to the pre-plan frame through the check's registration).
- ``STRING`` ``Status``: "<state>: <next step>".

Messages are packed by pyigtl; the server is our own threading TCP server, not ``pyigtl.OpenIGTLinkServer``:
that one serves a single client at a time, queues messages while none is connected (stale ones then arrive
first) and installs its own SIGTERM/SIGINT handlers, which would take the service's clean shutdown away.
Here each client gets the whole picture when it connects, then every message that changes.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import socketserver
import threading
from pathlib import Path

import numpy as np

from navigator.core.transform import RigidTransform

log = logging.getLogger(__name__)
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def ras(points_lps) -> np.ndarray:
    return np.asarray(points_lps, float).reshape(-1, 3) * LPS_TO_RAS


def snapshot(live) -> dict[str, tuple]:
    """``{device name: (message type, payload)}`` of what Slicer should show now (payloads are plain data)."""
    out: dict[str, tuple] = {"Status": ("STRING", f"{live.state.value}: {live.next_step()}")}
    pre = live.pre
    if pre is None:
        return out
    plan = _plan_in_force(live)
    if plan.seeds:
        out["PlannedSeeds"] = ("POINT", ([s.id for s in plan.seeds], ras(plan.seed_positions_mm()).round(3).tolist()))
    seeds = _seeds(live)
    if seeds is not None:
        out["Seeds"] = ("POINT", seeds)
    out.update(_needles(live))
    return out


def _plan_in_force(live):
    """The plan delivered next: an approved re-plan, else the pre-plan (also while a newer check waits for its
    re-plan: the approved one then no longer holds, and the pre-plan is what was planned)."""
    from navigator.session.controller import SessionStateError

    try:
        _, path, approval = live.plan_in_force()
    except SessionStateError:
        return live.pre.plan
    return live.pre.plan if approval is None else live.plan_at(path)


def _seeds(live):
    if live.facts.postimplants:
        r = json.loads((Path(live.facts.postimplants[-1]["dir"]) / "postimplant.json").read_text())
        if r["seeds"]:
            post_to_pre = RigidTransform.of(np.array(r["registration"]["fixed_to_moving"], float).reshape(4, 4)).inverse()
            pts = post_to_pre.apply(np.array([s["position_mm"] for s in r["seeds"]], float))
            return ([f"F{k + 1:03d}" for k in range(len(pts))], ras(pts).round(3).tolist())
    released = live.session.facts.released_seed_ids
    by_id = {s.id: s.position_mm for s in live.pre.plan.seeds}
    by_id.update({sid: v["position_mm"] for sid, v in live.started_seeds().items()})   # delivered from
    ids = [i for i in released if i in by_id]
    if not ids:
        return None
    return (ids, ras(np.array([by_id[i] for i in ids])).round(3).tolist())


def _needles(live) -> dict[str, tuple]:
    if not live.facts.checks:
        return {}
    c = json.loads((Path(live.facts.checks[-1]["dir"]) / "needles.json").read_text())
    to_pre = RigidTransform.of(np.array(c["registration"]["fixed_to_moving"], float).reshape(4, 4)).inverse()
    out = {}
    for n in c["needles"]:
        if not n["found"] or n.get("axis") is None:
            continue
        tip = to_pre.apply(np.array(n["tip_mm"], float))
        u = to_pre.rotate(np.array(n["axis"], float))
        towards_entry = np.array(n["planned_entry_mm"], float) - np.array(n["planned_tip_mm"], float)
        if np.dot(u, towards_entry) < 0:
            u = -u
        out[f"Needle_{n['id']}"] = ("TRANSFORM", _matrix(ras(tip)[0], ras(u)[0] / np.linalg.norm(u)))
    return out


def _matrix(tip_ras, w) -> list:
    """4x4 with translation ``tip_ras`` and an orthonormal rotation whose third column is ``w``."""
    a = np.array([1.0, 0, 0]) if abs(w[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(a, w)
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = u, v, w, tip_ras
    return np.round(m, 6).tolist()


def pack(name: str, kind: str, payload) -> bytes:
    import pyigtl

    if kind == "STRING":
        msg = pyigtl.StringMessage(payload, device_name=name)
    elif kind == "TRANSFORM":
        msg = pyigtl.TransformMessage(np.array(payload), device_name=name)
    else:
        names, pts = payload
        msg = pyigtl.PointMessage(positions=np.array(pts), names=list(names), device_name=name)
    return msg.pack()


class IgtlServer:
    """``start()`` listens on ``(host, port)`` (port 0: any free; ``.port`` is the bound one); ``refresh()``
    sends what changed to every client (the live session calls it on every change)."""

    def __init__(self, live, host: str = "127.0.0.1", port: int = 18944):
        self.live, self.host, self.port = live, host, int(port)
        self.clients: set[queue.Queue] = set()
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> None:
        igtl = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                igtl._serve_client(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        self._server = Server((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="igtl", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for q in self.clients:
                q.put(None)

    def _current(self) -> dict[str, tuple]:
        try:
            return snapshot(self.live)
        except Exception:  # a result file being replaced: the next change sends it
            log.exception("OpenIGTLink snapshot")
            return {}

    def refresh(self) -> None:
        snap = self._current()
        with self._lock:
            changed = {k: v for k, v in snap.items() if self._last.get(k) != repr(v)}
            self._last.update({k: repr(v) for k, v in changed.items()})
            for q in self.clients:
                for name, (kind, payload) in changed.items():
                    q.put(pack(name, kind, payload))

    def _serve_client(self, sock: socket.socket) -> None:
        q: queue.Queue = queue.Queue()
        snap = self._current()
        with self._lock:
            for name, (kind, payload) in snap.items():  # the whole picture first
                q.put(pack(name, kind, payload))
            self.clients.add(q)
        sock.settimeout(0.05)
        try:
            while True:
                try:
                    if sock.recv(65536) == b"":  # the client closed; what it sends (GET_, STATUS) is not used
                        return
                except socket.timeout:
                    pass
                while True:
                    try:
                        data = q.get_nowait()
                    except queue.Empty:
                        break
                    if data is None:
                        return
                    sock.sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self.clients.discard(q)
