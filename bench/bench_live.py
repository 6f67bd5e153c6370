"""Benchmark: ``navigator serve`` end to end, DICOM in to result on the HTTP API.

1. needle check: a 512 x 512 x 100 intraop scan with 20 needles sent by dcmtk's storescu; the time from the
   last slice received (storescu's exit) to the check on ``GET /api/checks/latest`` (goal <= 3 s on 2 cores;
   the series' quiet period, ``--quiet-s``, is inside that time and shown apart);
2. post-implant: a post-implant scan (relabelled by the operator) to cold spots and the supplementary proposal on
   ``GET /api/postimplant/latest`` (goal <= 5 s);
3. memory: ``--scans`` intraop scans in a row (the same pixels under new UIDs): the service's RSS after each
   check should stay flat (no series kept in memory).

    python bench/bench_live.py [--scans 20] [--quiet-s 0.5] [--seed 0]

Needs dcmtk's ``storescu``. Run under ``taskset -c 0,1`` to hold it to two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from navigator.core.plan import Needle, Plan, PlannedSeed  # noqa: E402
from navigator.io.dicom import PatientInfo, new_uid, write_ct_series  # noqa: E402
from navigator.live.users import UserStore  # noqa: E402
from navigator.physics import tg43  # noqa: E402
from simulators.phantoms.cases import demo_implant, intraop_scan, make_patient, postimplant_scan  # noqa: E402
from simulators.phantoms.motion import random_rigid  # noqa: E402
from simulators.phantoms.needles import NeedleErrorModel, draw_needles  # noqa: E402
from simulators.phantoms.writer import write_patient  # noqa: E402


def build(root: Path, seed: int):
    patient = make_patient("neck", seed, matrix=(512, 512), n_slices=60, pixel_mm=0.5)
    written = write_patient(patient, root / "case")
    needles, seeds, _ = demo_implant(patient, n_needles=20, seeds_per_needle=3, spacing_mm=10.0)
    plan = Plan(patient.ct.frame_of_reference_uid, patient.ct.series_uid, "GTV", 140.0, "6711",
                0.5 * tg43.MCI_TO_U)
    for k, (e, t) in enumerate(needles):
        plan.needles.append(Needle(f"N{k + 1:02d}", e, t, hole=f"{'ABCDE'[k // 5]}{2 * (k % 5) + 1}"))
        plan.seeds += [PlannedSeed(f"S{3 * k + s + 1:03d}", f"N{k + 1:02d}", seeds[3 * k + s]) for s in range(3)]
    (root / "plan").mkdir()
    plan.save(root / "plan" / "plan.json")
    rng = np.random.default_rng(seed + 5)
    m = random_rigid(rng, 10.0, 5.0, center_mm=patient.node_center_mm)
    draws = draw_needles(needles, NeedleErrorModel(), rng)
    scan = intraop_scan(patient, [(d.entry_mm, d.tip_mm) for d in draws], m, rng=rng, slice_mm=1.0,
                        length_mm=100.0)
    pos = plan.seed_positions_mm()
    keep = np.arange(len(pos)) >= 3  # one needle's seeds lost: a cold region
    post = postimplant_scan(patient, pos[keep] + rng.normal(0, 0.5, (keep.sum(), 3)), plan.seed_axes()[keep],
                            motion=m, rng=rng, slice_mm=1.0, length_mm=100.0)
    return patient, written, plan, scan, post, int(keep.sum())


def phantoms(root: Path, seed: int):
    """(pre-plan CT folder, plan, intraop scan, post-implant scan, seeds in it), built once per ``root``."""
    from navigator.io.dicom import load_ct_series

    done = root / "phantoms.json"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _, written, plan, scan, post, n_post = build(root, seed)
        write_copy(scan, root / "intraop_src", 0)
        write_copy(post, root / "post_src", 0)
        done.write_text(json.dumps({"n_post": n_post, "seed": seed}))
    for old in [*root.glob("scan*"), root / "post", root / "session"]:
        shutil.rmtree(old, ignore_errors=True)
    scan, post = load_ct_series(root / "intraop_src"), load_ct_series(root / "post_src")
    return (root / "case" / "preplan" / "ct", Plan.load(root / "plan" / "plan.json"), scan, post,
            json.loads(done.read_text())["n_post"])


def write_copy(scan, out: Path, k: int) -> Path:
    write_ct_series(scan, out, PatientInfo.from_volume(scan), series_uid=new_uid(f"bench-live/{k}"),
                    uid_seed=f"bench-live/{k}", file_names="index")
    return out


class Client:
    def __init__(self, session: Path, plan: Path, ct: Path, users: Path, quiet_s: float):
        cmd = [sys.executable, "-m", "navigator.cli", "serve", "--session", str(session), "--plan", str(plan),
               "--preplan-ct", str(ct), "--users", str(users), "--dicom-port", "0", "--http-port", "0",
               "--igtl-port", "0", "--series-quiet-s", str(quiet_s)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline().split()
        f = dict(kv.split("=", 1) for kv in line[1:])
        self.dicom_port, self.http = int(f["dicom"].rsplit(":", 1)[1]), f["http"]
        self.token = self.call("POST", "/api/login", {"username": "bench", "password": "bench-password"})["token"]
        self.call("POST", "/api/control", {})

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.http + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"}
                                                 if hasattr(self, "token") else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def send(self, folder: Path) -> float:
        subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "NAVIGATOR", "127.0.0.1", str(self.dicom_port),
                        "+sd", str(folder)], check=True, capture_output=True)
        return time.perf_counter()

    def until(self, path: str, key: str, value) -> float:
        while True:
            got = self.call("GET", path)
            if got is not None and got.get(key) == value:
                return time.perf_counter()
            time.sleep(0.02)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=20)
    ap.add_argument("--quiet-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", metavar="DIR", help="keep the phantoms here and reuse them on the next run "
                                                  "(building them takes minutes)")
    args = ap.parse_args(argv)
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_live_"))
    t = time.perf_counter()
    written, plan, scan, post, n_post = phantoms(root, args.seed)
    print(f"phantoms ready in {time.perf_counter() - t:.1f} s: intraop {scan.array.shape[::-1]}, post-implant "
          f"{post.array.shape[::-1]} voxels, {len(plan.needles)} needles, {len(plan.seeds)} seeds")
    users = UserStore(root / "users.json")
    users.add("bench", "physicist", "bench-password")
    users.save()
    c = Client(root / "session", root / "plan" / "plan.json", written, root / "users.json", args.quiet_s)
    rows, rss = [], []
    try:
        t = time.perf_counter()
        c.until("/api/session", "warm", True)   # in the room the service is up long before the first scan
        print(f"service warm {time.perf_counter() - t:.1f} s after its READY line")
        for k in range(1, args.scans + 1):
            folder = write_copy(scan, root / f"scan{k}", k)
            end = c.send(folder)
            ready = c.until("/api/session", "checks", k)
            check = c.call("GET", "/api/checks/latest")
            rows.append(ready - end)
            rss.append(c.rss_mb())
            # its pictures are drawn after the check is published; in the room the next scan comes minutes later,
            # so the next one here waits for them (else it would share the two cores with the drawing)
            page = root / "session" / "checks" / str(k) / "needles.html"
            while not page.exists():
                time.sleep(0.05)
            print(f"  scan {k:2d}: check on the API {ready - end:5.2f} s after the last slice "
                  f"({sum(n['found'] for n in check['needles'])}/{len(check['needles'])} needles found), "
                  f"RSS {rss[-1]:.0f} MB", flush=True)
        c.call("POST", "/api/scans/next", {"scan": "postimplant"})
        end = c.send(write_copy(post, root / "post", 999))
        ready = c.until("/api/session", "postimplants", 1)
        p = c.call("GET", "/api/postimplant/latest")
        post_s = ready - end
    finally:
        c.stop()
    lat = np.array(rows)
    print(f"\n| measure | value | goal |\n|---|---|---|")
    print(f"| needle check, last slice -> API (first scan) | {lat[0]:.2f} s (quiet period {args.quiet_s} s inside) "
          f"| <= 3 s |")
    print(f"| needle check, last slice -> API (median / max of {len(lat)}) | {np.median(lat):.2f} / {lat.max():.2f} s"
          f" | <= 3 s |")
    print(f"| post-implant, last slice -> cold spots + proposal | {post_s:.2f} s ({len(p['seeds'])}/{n_post} seeds "
          f"found, {len(p['cold_spots'])} cold spots, {len(p['supplementary']['seeds'])} seeds proposed) | <= 5 s |")
    print(f"| RSS after scan 1 / 5 / last | {rss[0]:.0f} / {rss[min(4, len(rss) - 1)]:.0f} / {rss[-1]:.0f} MB | flat |")
    aff = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"\nmachine: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"affinity={aff}, load average {os.getloadavg()[0]:.1f}, python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
