"""The simulated world of the rehearsal: where the needles and seeds really are.

It is kept apart from the procedure it drives (``driver.py``): only the operator model, the scanner and the
simulated applicator see it. Positions are in the patient's anatomy, which is the pre-plan CT's frame
(``preplan`` LPS mm). Every random draw comes from a generator seeded by (``seed``, step name), so a resumed
rehearsal (after SIGKILL) redraws the same world.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from navigator.core.plan import Plan
from navigator.core.transform import RigidTransform
from navigator.errors import InputError


def rng_for(seed: int, *step) -> np.random.Generator:
    """A generator per (seed, step...): the same draws whether the run is fresh or resumed."""
    key = [int(seed)] + [zlib.crc32(str(s).encode()) for s in step]
    return np.random.default_rng(key)


@dataclass(frozen=True)
class OperatorModel:
    """Needle placement error of a trained operator through a template (per axis, 1 SD); corrections after
    advice are more careful (1 SD per axis: ~1.8 mm RMS tip error on a 6 cm needle, so about a third of first
    insertions need a correction, as in CT-guided series)."""

    lateral_sd_mm: float = 0.8
    depth_sd_mm: float = 1.0
    angle_sd_deg: float = 0.7
    correction_scale: float = 0.35
    seed_drop_sd_mm: float = 0.7  # where a released seed settles along the track, vs the planned depth


class SimulatedWorld:
    """The synthetic patient ``case`` (``seed``), its scans and the operator's hands, writing under ``out``."""

    def __init__(self, case: str, seed: int, out: Path, operator: OperatorModel = OperatorModel()):
        self.case, self.seed, self.out, self.operator = case, seed, Path(out), operator
        self._patient = None

    def rng(self, *step) -> np.random.Generator:
        return rng_for(self.seed, *step)

    def patient(self):
        from simulators.phantoms import make_patient

        if self._patient is None:
            self._patient = make_patient(self.case, self.seed)
        return self._patient

    def motion(self, name: str):
        """The patient's pose in a later scan: rigid (up to 10 mm, 5 degrees between scans in the suite) and a
        small smooth deformation around the node, drawn per scan name."""
        from simulators.phantoms.motion import Motion, random_deformation, random_rigid

        p = self.patient()
        rng = self.rng("motion", name)
        rigid = random_rigid(rng, max_translation_mm=10.0, max_rotation_deg=5.0, center_mm=p.node_center_mm)
        # the patient lies still under the template between scans: soft tissue shifts by well under a mm
        deform = random_deformation(rng, p.node_center_mm, radius_mm=50.0, max_displacement_mm=0.5)
        return Motion(rigid, deform)

    # --- the pre-plan CT -------------------------------------------------------------------------------------
    def write_case(self) -> dict:
        from simulators.phantoms.writer import write_patient

        written = write_patient(self.patient(), self.out / "case")
        return {"ct_dir": str(written.ct_dir), "rtstruct": str(written.rtstruct_path),
                "truth": str(written.truth_path), "case": self.case}

    # --- needles -------------------------------------------------------------------------------------------
    def needle_draws(self, plan: Plan, scan: str, rnd: int, previous: dict, to_redraw: list[str]) -> dict:
        """Where the operator's needles really are (pre-plan anatomy frame), {needle_id: [entry, tip]}."""
        from simulators.phantoms.needles import NeedleErrorModel, draw_needles

        o = self.operator
        scale = 1.0 if rnd == 1 else o.correction_scale
        model = NeedleErrorModel(o.lateral_sd_mm * scale, o.depth_sd_mm * scale, o.angle_sd_deg * scale)
        rng = self.rng("needles", scan, rnd)
        ids = [n.id for n in plan.needles if n.id in to_redraw]
        planned = [(plan.needle(i).entry_mm, plan.needle(i).tip_mm) for i in ids]
        draws = draw_needles(planned, model, rng) if planned else []
        actual = dict(previous)
        for i, d in zip(ids, draws):
            actual[i] = [d.entry_mm.tolist(), d.tip_mm.tolist()]
        return actual

    def intraop_scan(self, name: str, attempt: int, needles: dict, scan_dir: Path) -> Path:
        """The intraop CT of the real needles ({id: [entry, tip]}), written as DICOM; its series folder."""
        from simulators.phantoms.cases import intraop_scan
        from simulators.phantoms.writer import write_scan

        pairs = [(np.array(e), np.array(t)) for e, t in needles.values()]
        rng = self.rng("scan", name, *(() if attempt == 1 else (attempt,)))
        vol = intraop_scan(self.patient(), pairs, motion=self.motion(name), rng=rng)
        return write_scan(vol, scan_dir)

    # --- seeds ---------------------------------------------------------------------------------------------
    def seeds_released(self, plan: Plan, actual_needles: dict, delivery: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Where each released seed really settled (pre-plan anatomy frame) and its axis: on the real needle,
        the planned distance back from its real tip, plus a small drop along the track."""
        rng = self.rng("seed_drop", name)
        released = {s["seed_id"] for s in delivery["seeds"]}
        out = []
        for s in plan.seeds:
            if s.id not in released:
                continue
            needle = plan.needle(s.needle_id)
            back_mm = needle.length_mm - needle.depth_of(s.position_mm)
            entry, tip = (np.array(v) for v in actual_needles.get(s.needle_id, (needle.entry_mm, needle.tip_mm)))
            u = (tip - entry) / np.linalg.norm(tip - entry)
            out.append(tip - (back_mm + rng.normal(scale=self.operator.seed_drop_sd_mm)) * u)
        axes = np.array([np.subtract(*actual_needles[s.needle_id][::-1]) for s in plan.seeds
                         if s.id in released]).reshape(-1, 3)
        return np.array(out).reshape(-1, 3), axes

    def postimplant_scan(self, name: str, seeds: np.ndarray, axes: np.ndarray, scan_dir: Path) -> Path:
        """The post-implant CT with the seeds where they really are, written as DICOM; its series folder."""
        from simulators.phantoms.cases import postimplant_scan
        from simulators.phantoms.writer import write_scan

        vol = postimplant_scan(self.patient(), seeds, axes, motion=self.motion(name), rng=self.rng("scan", name))
        return write_scan(vol, scan_dir)

    def supplementary_seeds(self, post_name: str, splan: Plan, delivery: dict) -> tuple[np.ndarray, np.ndarray]:
        """Where the supplementary seeds really went (pre-plan anatomy frame) and their axes: the navigator's
        target point in the post-implant scan, carried into the anatomy by the scan's true motion, plus a
        placement error (1 mm SD per axis)."""
        from simulators.phantoms.motion import Motion

        truth = json.loads((self.out / post_name / "truth.json").read_text())
        motion = Motion.from_dict(truth["motion"])
        released = {s["seed_id"] for s in delivery["seeds"]}
        rng = self.rng("supplement_error", post_name)
        seeds = [s for s in splan.seeds if s.id in released]
        if not seeds:
            return np.zeros((0, 3)), np.zeros((0, 3))
        anat = motion.scan_to_preplan(np.array([s.position_mm for s in seeds]))
        # rotate the needle axes back by the rigid part
        scan_to_preplan = RigidTransform(motion.rigid_preplan_to_scan).inverse()
        axes = scan_to_preplan.rotate(np.array([splan.needle(s.needle_id).axis for s in seeds]))
        return anat + rng.normal(scale=1.0, size=anat.shape), axes

    def scan_frame_of_reference(self, scan_name: str) -> str:
        return json.loads((self.out / scan_name / "truth.json").read_text())["frame_of_reference_uid"]


class SimulatedApplicator:
    """The simulated applicator as a separate process over TCP: it outlives a killed rehearsal, like a device."""

    def __init__(self, seed: int):
        self.seed = seed
        self._proc = None

    def start(self) -> tuple[str, int]:
        """Start it; ``(url, pid)``."""
        proc = subprocess.Popen([sys.executable, "-m", "simulators.applicator", "--listen", "127.0.0.1:0",
                                 "--seeds", "500", "--seed", str(self.seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        line = proc.stdout.readline().strip()
        if not line.startswith("LISTENING "):
            raise InputError(f"the simulated applicator did not start (said {line!r})")
        self._proc = proc
        return line.split(" ", 1)[1], proc.pid

    def stop(self, pid: int | None) -> None:
        """Stop the one this rehearsal folder started (``pid``, maybe by an earlier, killed run)."""
        if pid is not None and alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) counts as dead.
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
