"""``navigator robustness`` (and ``navigator plan --robust``) end to end on a synthetic neck patient written as
real DICOM: the contract's robustness.json and robustness.html from a real 2-worker local Dask cluster; the
same numbers from an existing cluster (``dask scheduler`` and one ``dask worker`` started here as separate
processes on 127.0.0.1) through ``--scheduler``; bad options and an unreachable scheduler exit 2 with a clear
message and leave ``--out`` as it was."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from navigator.cli import main
from simulators.phantoms.cases import make_patient
from simulators.phantoms.writer import write_patient
from tests.conftest import external_dask_cluster

REPO = Path(__file__).resolve().parents[2]
NUMBERS_NOT = {"seconds", "compute_seconds", "workers"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The patient written as DICOM and ``navigator plan --robust --site neck`` on it."""
    root = tmp_path_factory.mktemp("robustness_case")
    patient = make_patient("neck", 11, matrix=(170, 170), n_slices=40)
    written = write_patient(patient, root / "case")
    plan_dir = root / "plan"
    rc = main(["plan", "--ct", str(written.ct_dir), "--structures", str(written.rtstruct_path), "--target", "GTV",
               "--rx-gy", "120", "--seed-model", "6711", "--seed-activity-mci", "0.5", "--robust", "--site", "neck",
               "--out", str(plan_dir)])
    return {"root": root, "ct": written.ct_dir, "plan_rc": rc, "plan": plan_dir / "plan.json",
            "rs": plan_dir / "RTSTRUCT.dcm"}


def _args(case, out, *more) -> list[str]:
    return ["robustness", "--plan", str(case["plan"]), "--ct", str(case["ct"]), "--structures", str(case["rs"]),
            "--out", str(out), *more]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse refuses an option: exit 2 with its message
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def two_workers(case):
    out = case["root"] / "two_workers"
    rc = main(_args(case, out, "--samples", "200", "--seed", "5", "--workers", "2", "--site", "mediastinum",
                    "--tip-sd-mm", "1.5"))
    return rc, out


def test_plan_robust_records_its_figures(case):
    assert case["plan_rc"] in (0, 3)  # 3: written, but a clinical goal missed (named on stderr)
    d = json.loads(case["plan"].read_text())
    r = d["robust"]
    assert r["percentile"] == 10.0 and r["error_model"]["site"] == "neck" and r["samples"] == 1000
    assert {"plain", "uniform_scaling", "robust", "strength_factor", "met", "loadings_tried"} <= set(r)
    assert d["seed_sk_u"] == pytest.approx(r["seed_sk_u"], rel=1e-4)
    assert d["source_strength"]["sk_u_at_implant"] == pytest.approx(d["seed_sk_u"], rel=1e-6)
    assert r["met"] == (r["robust"]["D90_p10_gy"] >= 120.0)
    if r["plain"]["D90_p10_gy"] >= 120.0:  # robust already: the plain plan is kept as it is
        assert r["strength_factor"] == 1.0 and r["robust"]["seeds"] == r["plain"]["seeds"] == len(d["seeds"])
    assert d["metrics"]["V150_pct"] == pytest.approx(r["robust"]["nominal"]["V150_pct"], abs=1e-3)


def test_two_worker_local_cluster_writes_the_contract(case, two_workers):
    rc, out = two_workers
    assert rc == 0
    d = json.loads((out / "robustness.json").read_text())
    assert d["samples"] == 200 and d["workers"] == 2 and d["seed"] == 5 and d["seconds"] > 0
    em = d["error_model"]
    assert em["tip_sd_mm"] == 1.5 and em["site"] == "mediastinum"  # the option overrides the preset
    assert em["depth_sd_mm"] == pytest.approx(6.52, abs=0.01) and em["sources"]
    for key in ("D90_gy", "V100_pct"):
        s = d[key]
        assert list(s) == ["mean", "p5", "p10", "p50", "p90", "p95"]
        assert s["p5"] <= s["p10"] <= s["p50"] <= s["p90"] <= s["p95"]
    assert 0.0 <= d["pass_rate"] <= 1.0
    assert d["pass_rate"] == pytest.approx(sum(v >= d["prescription_gy"] for v in d["d90_samples_gy"]) / 200)
    plan = json.loads(case["plan"].read_text())
    used = {s["needle_id"] for s in plan["seeds"]}
    assert {n["id"] for n in d["needles"]} == used
    assert all(isinstance(n["d90_change_gy_per_mm"], float) for n in d["needles"])
    assert d["ctv"]["structure"] == "CTV" and d["ctv"]["spacing_mm"] == 1.0
    assert abs(d["ctv"]["cc"] - plan["metrics"]["ctv_cc"]) < 0.15 * plan["metrics"]["ctv_cc"]
    band = d["dvh_band"]
    assert len(band["dose_gy"]) == len(band["volume_pct"]["p5"]) == len(band["volume_pct"]["nominal"])
    page = (out / "robustness.html").read_text()
    assert page.count("<img") == 2 and "Needles ranked" in page and "10.1093/jrr/rrab068" in page


def test_existing_cluster_through_scheduler_gives_the_same_numbers(case, two_workers, tmp_path):
    _, out2 = two_workers
    with external_dask_cluster() as address:
        out = tmp_path / "scheduler"
        rc = main(_args(case, out, "--samples", "200", "--seed", "5", "--scheduler", address, "--site", "mediastinum",
                        "--tip-sd-mm", "1.5"))
    assert rc == 0
    one = json.loads((out / "robustness.json").read_text())
    two = json.loads((out2 / "robustness.json").read_text())
    assert one["workers"] == 1 and two["workers"] == 2
    assert {k: v for k, v in one.items() if k not in NUMBERS_NOT} == {k: v for k, v in two.items()
                                                                        if k not in NUMBERS_NOT}


def _untouched_out(tmp_path) -> tuple[Path, dict]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "robustness.json").write_text('{"an": "earlier run"}')
    (out / "keep.txt").write_text("not ours")
    return out, {p.name: p.read_text() for p in out.iterdir()}


@pytest.mark.parametrize("more, says", [
    (["--tip-sd-mm", "-1"], "--tip-sd-mm"),
    (["--depth-sd-mm", "nan"], "--depth-sd-mm"),
    (["--angle-sd-deg", "45"], "--angle-sd-deg"),
    (["--samples", "0"], "--samples"),
    (["--samples", "2.5"], "--samples"),
    (["--seed-loss-pct", "100"], "--seed-loss-pct"),
    (["--workers", "0"], "--workers"),
    (["--site", "pelvis"], "--site"),
    (["--scheduler", "127.0.0.1"], "tcp://HOST:PORT"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not allowed with"),
    (["--ctv", "NoSuchCTV"], "no structure named 'NoSuchCTV'"),
])
def test_bad_options_exit_2_and_leave_out_untouched(case, tmp_path, capsys, more, says):
    out, before = _untouched_out(tmp_path)
    rc, err = _run(_args(case, out, *more), capsys)
    assert rc == 2, err
    assert says in err and "Traceback" not in err
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.partial-*"))


def test_unreachable_scheduler_exits_2_and_leaves_out_untouched(case, tmp_path, capsys):
    out, before = _untouched_out(tmp_path)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        rc, err = _run(_args(case, out, "--samples", "20", "--scheduler", address), capsys)
    assert rc == 2, err
    assert f"--scheduler {address}" in err and "no Dask scheduler answered" in err and "Traceback" not in err
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out.partial-*"))

