"""The rehearsal through the live path: the same procedure as ``driver.Rehearsal``, with the navigator's side
done by ``navigator serve`` exactly as in the CT suite.

- the service runs as a separate process (``navigator serve`` on 127.0.0.1, every port chosen free unless
  ``--watch`` names the console's), with the pre-plan (``--plan``), the applicator (the simulator process over
  TCP, ``--device``) and its own journal in ``OUT/live/``;
- the simulated scanner sends every scan by DICOM C-STORE (``navigator.io.dicom.send``) from the AE title
  ``SCANNER``, the only one the service allows;
- the simulated physicist acts through the HTTP API as a person at the console does: logs in, takes control,
  accepts deviations, approves the re-plan and the supplementary seeds, starts each delivery.

What the rehearsal checks and reports comes from the API's answers (written beside each scan as needles.json,
postimplant.json and delivery.json, the files the command-line rehearsal writes), so ``rehearsal.json`` and the
report are the same as ``driver.Rehearsal``'s. With ``pace_s`` (``--watch``) every step waits that long first,
so a team can follow it on the console.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from navigator.core.plan import Plan
from navigator.errors import DeliveryError, InputError
from navigator.io import write_json, write_text
from navigator.rehearsal.driver import Rehearsal, RehearsalOptions, RehearsalStepFailed, _summary_of_postimplant

SCANNER_AE = "SCANNER"
PHYSICIST = "rehearsal"


class ServiceProcess:
    """``navigator serve`` as a child process; the ports from its READY line."""

    def __init__(self, args: list[str], log_path: Path, ready_timeout_s: float = 180.0):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "navigator.cli", "serve", *args],
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     preexec_fn=_stop_with_parent)
        line = self._readline(ready_timeout_s)
        if not line.startswith("READY "):
            self.stop()
            raise RehearsalStepFailed(f"`navigator serve` did not start (it printed {line!r}); see {log_path}")
        fields = dict(kv.split("=", 1) for kv in line.split()[1:])
        self.http = fields["http"]
        host, port = fields["dicom"].rsplit(":", 1)
        self.dicom = (host.strip("[]"), int(port))
        self.igtl = fields["igtl"]

    def _readline(self, timeout_s: float) -> str:
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout_s)
        return got[0].strip() if got else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def _stop_with_parent() -> None:
    """In the child: SIGTERM it when the rehearsal dies (killed, even by SIGKILL), so no service is left
    holding the session folder and its ports (Linux PR_SET_PDEATHSIG; elsewhere the rehearsal's own stop)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


class Console:
    """A person at the operator console, through the HTTP API (the console's own calls)."""

    def __init__(self, base_url: str, service: ServiceProcess):
        self.base = base_url
        self.service = service
        self.token: str | None = None

    def call(self, method: str, path: str, body=None, ok=(200,)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                code, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            code, text = e.code, e.read().decode()
        except OSError as exc:
            raise RehearsalStepFailed(f"{method} {path}: the service did not answer ({exc}); see "
                                      f"{self.service.log_path}") from None
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if code not in ok:
            raise RehearsalStepFailed(f"{method} {path} answered {code}: {value}")
        return code, value

    def get(self, path: str, ok=(200,)):
        return self.call("GET", path, ok=ok)[1]

    def post(self, path: str, body=None, ok=(200,)):
        return self.call("POST", path, {} if body is None else body, ok=ok)[1]

    def login(self, name: str, password: str) -> None:
        self.token = self.post("/api/login", {"username": name, "password": password})["token"]
        self.post("/api/control")

    def wait(self, predicate, what: str, timeout_s: float = 600.0):
        """Poll until ``predicate()`` gives a value (each poll also keeps the console's control alive)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if not self.service.alive():
                raise RehearsalStepFailed(f"`navigator serve` stopped while waiting for {what}; see "
                                          f"{self.service.log_path}")
            time.sleep(0.2)
        raise RehearsalStepFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LiveRehearsal(Rehearsal):
    """``driver.Rehearsal`` with the navigator's side done by a running ``navigator serve``."""

    def __init__(self, opts: RehearsalOptions, pace_s: float = 0.0, http_port: int = 0, series_quiet_s: float = 0.5,
                 announce=None):
        if opts.skip_needles:
            raise InputError("--skip-needles is rehearsed on the in-process path only (the live service has no "
                             "'abandon a needle' decision yet): add --in-process")
        super().__init__(opts)
        self.pace_s = pace_s
        self.http_port = http_port
        self.series_quiet_s = series_quiet_s
        self.announce = announce or self.say
        self.service: ServiceProcess | None = None
        self.console: Console | None = None

    # --- the service --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            result = super().run()
            self._pace("the team reviews the result on the console; then the service stops", factor=3.0)
            return result
        finally:
            if self.service is not None:
                self.service.stop()

    def preplan(self) -> Path:
        plan_path = super().preplan()
        self._start_service(plan_path)
        return plan_path

    def _start_service(self, plan_path: Path) -> None:
        from navigator.live.users import UserStore

        live = self.out / "live"
        live.mkdir(exist_ok=True)
        password = secrets.token_urlsafe(12)
        users = UserStore.load(live / "users.json", missing_ok=True)
        users.add(PHYSICIST, "physicist", password)
        users.save()
        args = ["--session", str(live), "--plan", str(plan_path), "--preplan-ct", str(self.case["ct_dir"]),
                "--device", self.device_url(), "--simulate-operator", "--dicom-port", "0",
                "--http-port", str(self.http_port), "--igtl-port", "0", "--bind", "127.0.0.1",
                "--allow-ae", SCANNER_AE, "--series-quiet-s", str(self.series_quiet_s),
                "--users", str(live / "users.json"), "--tolerance-mm", str(self.o.tolerance_mm)]
        self.service = ServiceProcess(args, live / "serve.log")
        self.console = Console(self.service.http, self.service)
        self.console.login(PHYSICIST, password)
        self.session.record("live_service_started", {"http": self.service.http, "dicom": list(self.service.dicom),
                                                     "igtl": self.service.igtl})
        self.announce(f"console: {self.service.http}/  (user {PHYSICIST}, password {password}); "
                      f"3D Slicer OpenIGTLink: {self.service.igtl}")

    def _pace(self, what: str, factor: float = 1.0) -> None:
        if self.pace_s > 0:
            self.announce(f"next: {what}")
            time.sleep(self.pace_s * factor)

    def _send(self, ct_dir: Path, what: str) -> dict:
        """The scanner sends the series; its row on /api/series once the service has processed it."""
        from navigator.io.dicom.send import send_folder

        self._pace(f"the scanner sends the {what}")
        sent = send_folder(ct_dir, *self.service.dicom, calling_ae=SCANNER_AE, called_ae="NAVIGATOR")
        uid = sent.series_uids[0]

        def processed():
            rows = [r for r in self.console.get("/api/series") if r["series_uid"] == uid]
            return rows[0] if rows and rows[0].get("processed") else None

        return self.console.wait(processed, f"the service to process the {what} ({uid})")

    # --- the steps, through the live path ------------------------------------------------------------------------
    def check_scan(self, plan: Plan, name: str, world_needles: dict, max_scans: int = 3) -> dict:
        for attempt in range(1, max_scans + 1):
            scan_dir = self.out / "intraop" / (name if attempt == 1 else f"{name}_rescan{attempt - 1}")
            ct_dir = self.world.intraop_scan(name, attempt, world_needles, scan_dir)
            row = self._send(ct_dir, f"intraop scan {scan_dir.name}")
            if not row.get("error"):
                break
            if attempt == max_scans or "registration" not in str(row["error"]).lower():
                raise RehearsalStepFailed(f"the service could not check the scan {scan_dir}: {row['error']}")
            self.session.record("rescan", {"scan": name, "attempt": attempt, "reason": row["error"]})
            self.say(f"{name}: {row['error']}; the operator rescans")
        check = self.console.get("/api/checks/latest")
        if check.get("series_uid") != row["series_uid"]:
            raise RehearsalStepFailed(f"the latest needle check is of series {check.get('series_uid')}, not of the "
                                      f"scan just sent ({row['series_uid']})")
        write_json(scan_dir / "needles.json", check)
        write_json(scan_dir / "registration.json", check["registration"])
        # only the needles inserted so far count for this round (the check lists every planned needle)
        needles = [n for n in check["needles"] if n["id"] in world_needles]
        return {"needles": needles, "registration": check["registration"], "dir": str(scan_dir)}

    def accept_deviations(self, scan: str, needle_ids: list[str], reason: str) -> None:
        pending = self._pending_out_of_tolerance()
        ids = [i for i in needle_ids if i in pending]
        if ids:
            self._pace(f"the physicist accepts {', '.join(ids)}")
            self.console.post("/api/checks/latest/accept", {"needle_ids": ids, "reason": reason})
        super().accept_deviations(scan, needle_ids, reason)

    def _pending_out_of_tolerance(self) -> list[str]:
        check = self.console.get("/api/checks/latest")
        accepted = set(check.get("accepted") or [])
        return [n["id"] for n in check["needles"] if not n["within_tolerance"] and n["id"] not in accepted]

    def run_replan(self, plan_path: Path, check_dir: Path) -> tuple[int, dict | None, Path]:
        self._pace("the physicist asks for a re-plan on the needles as found")
        code, data = self.console.call("POST", "/api/replan", {}, ok=(200, 409, 422, 501))
        if code != 200:
            self.session.record("replan_refused", {"answer": data})
            return 2, None, Path()
        folder = self.out / "replan"
        folder.mkdir(exist_ok=True)
        write_json(folder / "replan.json", data)  # the report's copy, as the command-line rehearsal writes it
        revision = self.out / "live" / "replan" / str(data["replan"]) / "plan.json"
        return (0 if data.get("goals_met", True) else 3), data, revision

    def approve_replan(self) -> None:
        self._pace("the physicist approves the re-plan for delivery")
        self.console.post("/api/replan/approve")
        super().approve_replan()

    def deliver(self, plan_path: Path, name: str) -> dict:
        self._pace(f"the operator starts the {name.replace('_', ' ')}")
        self.console.post("/api/delivery/start")

        def finished():
            d = self.console.get("/api/delivery")
            return d if d.get("name") == name and not d.get("running") and d.get("device_released_total") is not None \
                else None

        data = self.console.wait(finished, f"the {name} to finish", timeout_s=1800)
        data = {k: v for k, v in data.items() if k not in ("running", "device")}
        (self.out / name).mkdir(exist_ok=True)
        write_json(self.out / name / "delivery.json", data)
        if not data.get("reconciled"):
            raise DeliveryError(f"{name}: the live delivery stopped ({data.get('stopped_reason') or 'not reconciled'})"
                                f"; see {self.out / 'live' / 'session.jsonl'}")
        return data

    def postimplant(self, name: str, seeds_world, axes_world, plan_path: Path) -> dict:
        scan_dir = self.out / name
        ct_dir = self.world.postimplant_scan(name, seeds_world, axes_world, scan_dir)
        row = self._send(ct_dir, f"post-implant scan {name}")
        if row.get("error"):
            raise RehearsalStepFailed(f"the service could not evaluate the post-implant scan {name}: {row['error']}")
        result = self.console.get("/api/postimplant/latest")
        write_json(scan_dir / "postimplant.json", result)
        html = self.console.call("GET", "/api/postimplant/latest/html", ok=(200, 404))
        if html[0] == 200 and isinstance(html[1], str):
            write_text(scan_dir / "postimplant.html", html[1])
        return {"dir": str(scan_dir), "result": _summary_of_postimplant(result), "truth_seeds": len(seeds_world)}

    def supplement_plan(self, name: str, post: dict, post_plan_frame: str) -> Plan | None:
        if not post["result"]["supplementary"]["seeds"]:
            return None
        self._pace("the physicist approves the supplementary seeds")
        approved = self.console.post("/api/supplement/approve")
        return Plan.load(approved["plan"], name="the approved supplement")
