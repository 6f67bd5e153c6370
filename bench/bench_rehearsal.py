"""Benchmark: ``navigator rehearse`` over many ``--seed`` values of one phantom case (issue #8).

Each seed is a fresh rehearsal in its own process (``python -m navigator.cli rehearse --out ROOT/CASE-sN
--seed N --case CASE --json``), so the time includes start-up, numba's cached kernels and the simulated
applicator's own process, as an operator would see it. Per seed it prints the pre-plan, post-implant (before
supplementary seeds) and final D90/V100, the seeds planned / released / supplementary, the device counter,
the needle scans (out of tolerance / checked, per scan) and the wall time; then the summary the issue asks
for: how many seeds end with final D90 >= prescription, the mean D90 drop pre-plan -> post-implant, the
median / max time, with the machine details and the load average (a loaded machine gives pessimistic times).

    python bench/bench_rehearsal.py --seeds 1-20 --case neck [--out-root /tmp/rehearsal_bench] [--keep] [--json F]
    python bench/bench_rehearsal.py --summarize F1.json F2.json   # merge runs done in parallel streams

The rehearsals run from a copy of the code taken when the bench starts (ROOT/src; ``--no-snapshot`` runs the
shared working tree as it is), so that one table is one version of the code; the commit is printed.

A seed whose rehearsal fails is listed with its exit code and the last line of its message (and counts as a
failure in the summary); its folder is kept for the bug report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snapshot_source(dest: Path) -> tuple[Path, str]:
    """A copy of the working tree's code (with numba's caches, mtimes kept) to run from, so that the
    rehearsals of one bench run all use the same code while others keep editing the shared tree. Returns
    the folder and a line naming the commit and the files that differ from it."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(".git", "out", "*.egg-info", "img"))
    head = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--short", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.split()
    changed = [p for p in dirty[1::2]]
    return dest, f"code: {head[:90]}" + (f"; uncommitted changes in {', '.join(changed)}" if changed else "")


def parse_seeds(text: str) -> list[int]:
    """``1-20``, ``1..20``, ``3,5,7`` or a mix."""
    seeds: list[int] = []
    for part in text.replace("..", "-").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            seeds.extend(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    return seeds


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine() -> str:
    aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
            f"affinity = {aff} cores, python {platform.python_version()}, {platform.platform()}")


def run_one(case: str, seed: int, out: Path, extra: list[str], timeout_s: float, code: Path = REPO) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "navigator.cli", "rehearse", "--out", str(out), "--seed", str(seed),
           "--case", case, "--json", *extra]
    load_before = load_avg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=code, capture_output=True, text=True, timeout=timeout_s)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the rehearsal process (its simulator runs in its own session and is not counted; it
    # idles): on a loaded machine this, not the wall time, says what 2 free cores would take.
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    row = {"case": case, "seed": seed, "rc": rc, "wall_s": wall, "cpu_s": cpu, "load_before": load_before,
           "load_after": load_avg(), "out": str(out)}
    if rc == 0 and (out / "rehearsal.json").exists():
        row["result"] = json.loads((out / "rehearsal.json").read_text())
    else:
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        row["error"] = " | ".join(lines[-3:]) if lines else "(no message)"
    return row


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def scans_text(r: dict) -> str:
    parts = []
    for s in r.get("needle_scans", []):
        tag = "ref" if s.get("scan") == "reference" else "all"
        parts.append(f"{tag}{s.get('round', '')}:{s['out_of_tolerance']}/{s['needles']}")
    return " ".join(parts)


HEADER = (f"{'case':<12} {'seed':>4} {'rc':>3} {'preD90':>7} {'preV100':>7} {'postD90':>7} {'postV100':>8} "
          f"{'finD90':>7} {'finV100':>7} {'plan':>4} {'rel':>4} {'supp':>4} {'dev':>4} {'wall_s':>7} "
          f"{'cpu_s':>6} {'load1':>5}  needle scans (out/checked)")


def format_row(row: dict) -> str:
    r = row.get("result")
    if r is None:
        return (f"{row['case']:<12} {row['seed']:>4} {str(row['rc']):>3}  FAILED after {row['wall_s']:.0f} s: "
                f"{row['error'][:300]}")
    pre, post, fin = r["preplan_metrics"], r["postimplant_metrics"], r["final_metrics"]
    return (f"{row['case']:<12} {row['seed']:>4} {row['rc']:>3} {_f(pre['D90_gy']):>7} {_f(pre['V100_pct']):>7} "
            f"{_f(post['D90_gy']):>7} {_f(post['V100_pct']):>8} {_f(fin['D90_gy']):>7} {_f(fin['V100_pct']):>7} "
            f"{r['seeds_planned']:>4} {r['seeds_released']:>4} {r['supplementary_seeds']:>4} "
            f"{_f(r['device_released_total'], '{}'):>4} {row['wall_s']:>7.1f} {row.get('cpu_s', 0):>6.1f} "
            f"{row['load_before'].split()[0]:>5}  {scans_text(r)}")


def summary(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("result")]
    lines = [f"rehearsals: {len(rows)}, completed: {len(ok)}, failed: {len(rows) - len(ok)}"
             + (f" (seeds {', '.join(str(r['seed']) for r in rows if not r.get('result'))})"
                if len(ok) < len(rows) else "")]
    if ok:
        met = [r for r in ok if r["result"]["final_metrics"]["D90_gy"] >= r["result"]["prescription_gy"]]
        post_met = [r for r in ok if r["result"]["postimplant_metrics"]["D90_gy"] >= r["result"]["prescription_gy"]]
        drops = [r["result"]["preplan_metrics"]["D90_gy"] - r["result"]["postimplant_metrics"]["D90_gy"] for r in ok]
        gains = [r["result"]["final_metrics"]["D90_gy"] - r["result"]["postimplant_metrics"]["D90_gy"] for r in ok]
        v_drops = [r["result"]["preplan_metrics"]["V100_pct"] - r["result"]["postimplant_metrics"]["V100_pct"]
                   for r in ok]
        consistent = [r for r in ok if r["result"]["device_released_total"] ==
                      r["result"]["seeds_released"] + r["result"]["supplementary_seeds"]]
        all_planned = [r for r in ok if r["result"]["seeds_released"] == r["result"]["seeds_planned"]]
        walls = [r["wall_s"] for r in ok]
        cpus = [r.get("cpu_s", 0.0) for r in ok]
        rx = ok[0]["result"]["prescription_gy"]
        lines += [
            f"final D90 >= Rx ({rx:.0f} Gy): {len(met)} of {len(rows)}"
            f" (post-implant before supplementary seeds: {len(post_met)} of {len(rows)})",
            f"D90 drop pre-plan -> post-implant: mean {statistics.mean(drops):.1f} Gy, median "
            f"{statistics.median(drops):.1f} Gy, range {min(drops):.1f} .. {max(drops):.1f} Gy; "
            f"V100 drop mean {statistics.mean(v_drops):.1f} %-points",
            f"D90 gain post-implant -> final (supplementary seeds): mean {statistics.mean(gains):.1f} Gy; "
            f"supplementary seeds: total {sum(r['result']['supplementary_seeds'] for r in ok)}, in "
            f"{sum(1 for r in ok if r['result']['supplementary_seeds'])} rehearsals",
            f"device counter == released + supplementary: {len(consistent)} of {len(ok)}; every planned seed "
            f"released: {len(all_planned)} of {len(ok)} (fewer by design with --skip-needles)",
            f"wall time per rehearsal: median {statistics.median(walls):.0f} s, max {max(walls):.0f} s, "
            f"min {min(walls):.0f} s (target <= 180 s on 2 cores); CPU seconds per rehearsal: median "
            f"{statistics.median(cpus):.0f} s, max {max(cpus):.0f} s (what an unloaded machine needs, roughly)",
            f"load average (1 min) before each rehearsal: "
            f"{min(float(r['load_before'].split()[0]) for r in rows):.1f} .. "
            f"{max(float(r['load_before'].split()[0]) for r in rows):.1f}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-20", help="seed values: 1-20, 1..20 or 1,4,9 (default 1-20)")
    ap.add_argument("--case", action="append", help="phantom case (repeatable; default neck)")
    ap.add_argument("--out-root", default="/tmp/rehearsal_bench", help="parent folder of the rehearsals")
    ap.add_argument("--keep", action="store_true", help="keep every rehearsal folder (default: failed ones only)")
    ap.add_argument("--timeout-s", type=float, default=1200.0, help="give up on one rehearsal after this long")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the working tree's code as it is at each rehearsal (default: a copy taken at start)")
    ap.add_argument("--summarize", nargs="+", metavar="ROWS.json",
                    help="print the table and summary of earlier runs' --json files (no rehearsal is run)")
    ap.add_argument("extra", nargs="*", help="extra options for navigator rehearse (after --)")
    args = ap.parse_args(argv)
    if args.summarize:
        rows = [r for f in args.summarize for r in json.loads(Path(f).read_text())]
        rows.sort(key=lambda r: (r["case"], r["seed"]))
        print(machine())
        print(HEADER)
        for r in rows:
            print(format_row(r))
        print()
        for case in sorted({r["case"] for r in rows}):
            print(f"--- {case} ---")
            print(summary([r for r in rows if r["case"] == case]))
        return 0
    cases = args.case or ["neck"]
    seeds = parse_seeds(args.seeds)
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    print(machine())
    code = REPO
    if not args.no_snapshot:
        code, what = snapshot_source(root / "src")
        print(f"running a copy of the code taken at start ({code}); {what}")
    print(f"numba threads: {os.environ.get('NUMBA_NUM_THREADS', 'default')}; load average at start: {load_avg()}; "
          f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(HEADER, flush=True)
    rows = []
    for case in cases:
        for seed in seeds:
            row = run_one(case, seed, root / f"{case}-s{seed}", args.extra, args.timeout_s, code)
            rows.append(row)
            print(format_row(row), flush=True)
            if args.json:  # after every rehearsal, so a run cut short still leaves its rows
                Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
            if row.get("result") and not args.keep:
                shutil.rmtree(row["out"], ignore_errors=True)
    print()
    for case in cases:
        print(f"--- {case} ---")
        print(summary([r for r in rows if r["case"] == case]))
    print(f"load average at end: {load_avg()}; finished {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    failed = sum(1 for r in rows if not r.get("result"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
