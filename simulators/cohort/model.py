"""The synthetic cohort's world: patients with known implants, known delivered D90 and a known dose-response.

Each patient (``make_study``) is a phantom neck node (``simulators.phantoms``) implanted with parallel needles
on a square lattice (``needle_pitch_mm``, the approach of ``phantoms.demo_implant``) carrying seeds every
``seed_pitch_mm`` inside the node, as a real implant spaces them; some of the seeds are deliberately missing: the seeds on one side of the node (a random direction)
are left out first, so the node has a cold side and the delivered D90 falls well below what the full implant
would give. How many are left out and the seed strength are chosen so that the true D90 is spread over
``d90_range`` x the cut-off:

- a patient with an RT Plan (``plan_fraction`` of them) loses a random 0-50 % of its seeds and its strength
  is set to give the drawn D90 (within ``sk_range_u``): the RT Plan is what tells the analysis the strength;
- a patient without one has the cohort's ``default_sk_u`` (give it to ``navigator cohort --seed-sk-u``) and
  loses seeds from the cold side until its D90 reaches the drawn one.

The true D90 is computed here, independently of the navigator's pipeline: the analytic node shape's occupancy
on a fine grid (``truth_grid_mm``) with the TG-43 reference evaluation (``physics.dose.dose_at_points``, seed
by seed) of the true seeds with their true axes (2D formalism); rigid motion does not change a dose, so it is
done in the pre-plan frame.

Outcomes from the true D90: response with probability ``1 / (1 + exp(-(D90 - cutoff) / response_width_gy))``;
time to local progression exponential with rate ``baseline_hazard_per_month`` (x ``hazard_ratio_below`` when
D90 < cutoff), censored at a follow-up drawn uniformly in ``follow_up_months``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from navigator.core.volume import grid_volume

DEFAULT_SK_U = 1.016   # 0.8 mCi (6711): a full implant of a 22-30 mm node then gives D90 ~ 120-200 Gy


@dataclass(frozen=True)
class CohortSpec:
    """Everything that makes a synthetic cohort; same spec, same cohort (UIDs included)."""

    patients: int = 12
    seed: int = 0
    cutoff_d90_gy: float = 100.0          # the dose-response's true cut-off
    response_width_gy: float = 5.0        # logistic scale: p(response) 27 % / 73 % at cut-off -/+ 5 Gy
    baseline_hazard_per_month: float = 0.02
    hazard_ratio_below: float = 4.0       # hazard of a node with D90 < cut-off, relative to one above
    follow_up_months: tuple[float, float] = (12.0, 48.0)
    d90_range: tuple[float, float] = (0.5, 1.6)   # true D90 drawn uniformly over this x cut-off
    node_diameter_mm: tuple[float, float] = (22.0, 30.0)
    needle_pitch_mm: float = 7.0          # needles on a square lattice this far apart
    seed_pitch_mm: float = 8.5            # seed centres along a needle (4.5 mm seeds, 4 mm spacers)
    n_slices: int = 30                    # the post-implant CT
    slice_mm: float = 2.5
    matrix: int = 128                     # columns = rows
    pixel_mm: float = 0.8
    scanners: tuple[str, ...] = ("sim_a", "vendor_b")
    plan_fraction: float = 0.6            # share of patients whose study holds an RT Plan
    seed_model: str = "6711"
    default_sk_u: float = DEFAULT_SK_U    # strength of the patients without an RT Plan
    sk_range_u: tuple[float, float] = (0.3, 2.0)
    max_lost_fraction: float = 0.5        # a patient with an RT Plan loses up to this share of its seeds
    rx_gy: float = 120.0
    truth_grid_mm: float = 0.6
    broken: tuple[str, ...] = ()          # "truncated_ct", "no_target", "no_structures": the last patients'
    orphan_outcomes: int = 0              # outcome rows of patients with no study at all
    targets_named: tuple[str, ...] = ("GTV", "GTV", "gtv")   # how the structure sets spell the target

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"patients {self.patients}: give at least 1")
        if len(self.broken) > self.patients:
            raise ValueError(f"{len(self.broken)} broken studies asked of {self.patients} patients")
        bad = set(self.broken) - {"truncated_ct", "no_target", "no_structures"}
        if bad:
            raise ValueError(f"unknown broken kind(s) {sorted(bad)}: truncated_ct, no_target, no_structures")

    def response_probability(self, d90_gy):
        """The true dose-response: probability of a response at ``d90_gy`` (logistic around the cut-off)."""
        return 1.0 / (1.0 + np.exp(-(np.asarray(d90_gy, float) - self.cutoff_d90_gy) / self.response_width_gy))

    def population_youden_cutoff_gy(self) -> float:
        """The Youden cut-off of the whole population (D90 uniform over ``d90_range`` x cut-off): where the
        response probability equals the prevalence (there d/dt of TPR - FPR vanishes). Not the logistic
        midpoint when the D90 range is not symmetric about it (100.9 Gy for the defaults)."""
        from scipy.optimize import brentq

        lo, hi = (f * self.cutoff_d90_gy for f in self.d90_range)
        prevalence = float(self.response_probability(np.linspace(lo, hi, 20001)).mean())
        return float(brentq(lambda t: self.response_probability(t) - prevalence, lo, hi))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticStudy:
    """One patient: the implant as it really is, the scan to write and the outcome."""

    index: int
    patient_id: str
    patient: object                  # simulators.phantoms.Patient (its anatomy)
    motion: np.ndarray               # preplan_to_scan 4x4
    needles: list                    # (entry_mm, tip_mm) pre-plan frame, the full implant's
    seeds_pre_mm: np.ndarray         # implanted seeds, pre-plan frame
    axes_pre: np.ndarray
    needle_of_seed: list[int]
    seeds_designed: int
    sk_u: float
    has_plan: bool
    d90_gy: float
    p_response: float
    response: int
    time_months: float
    event: int
    scanner: str
    target_name: str
    broken: str | None = None
    extra: dict = field(default_factory=dict)


def lattice_implant(patient, needle_pitch_mm: float, seed_pitch_mm: float):
    """The full implant of a node: parallel needles on a square lattice ``needle_pitch_mm`` apart (entry, tip
    and approach of ``phantoms.demo_implant``), seeds every ``seed_pitch_mm`` along each, kept where they lie
    at least 1 mm inside the node's equivalent sphere. Returns (needles [(entry, tip)] of the needles that
    carry seeds, seeds (N, 3), axes (N, 3), needle index of each seed), pre-plan LPS mm."""
    from simulators.phantoms import demo_implant

    d = float(patient.options["node_diameter_mm"])
    r = 0.5 * d - 1.0
    side = 2 * int(r // needle_pitch_mm) + 1
    lattice, centres, axes = demo_implant(patient, n_needles=side * side, seeds_per_needle=1,
                                          spacing_mm=needle_pitch_mm)
    c = patient.node_center_mm
    needles, seeds, seed_axes, needle_of = [], [], [], []
    n_along = int(r // seed_pitch_mm)
    for (entry, tip), p, u in zip(lattice, centres, axes):
        row = [p + t * seed_pitch_mm * u for t in range(-n_along, n_along + 1)]
        row = [q for q in row if np.linalg.norm(q - c) <= r]
        if not row:
            continue
        needles.append((entry, tip))
        seeds += row
        seed_axes += [u] * len(row)
        needle_of += [len(needles) - 1] * len(row)
    return needles, np.array(seeds).reshape(-1, 3), np.array(seed_axes).reshape(-1, 3), needle_of


def truth_influence(patient, seeds_pre_mm: np.ndarray, axes_pre: np.ndarray, model, step_mm: float):
    """(dose per seed at 1 U (P, N) Gy, occupancy weights (P,), voxel cc) on a fine grid over the node in the
    pre-plan frame: the reference TG-43 evaluation at the voxel centres the analytic node occupies."""
    from navigator.physics.dose import dose_at_points
    from simulators.phantoms.shapes import structure_occupancy

    c = patient.node_center_mm
    half = 0.75 * float(patient.options["node_diameter_mm"]) + 4.0
    grid = grid_volume(c - half, c + half, step_mm)
    occ = structure_occupancy(patient.anatomy.scene, patient.target, grid)
    kk, jj, ii = np.nonzero(occ > 0)
    pts = grid.ijk_to_lps(np.stack([ii, jj, kk], axis=1).astype(float))
    a = np.empty((len(pts), len(seeds_pre_mm)))
    for j in range(len(seeds_pre_mm)):
        a[:, j] = dose_at_points(pts, seeds_pre_mm[j:j + 1], axes_pre[j:j + 1], 1.0, model)
    return a, occ[kk, jj, ii].astype(float), grid.voxel_volume_cc


def d90_of(dose_gy: np.ndarray, weights: np.ndarray, voxel_cc: float) -> float:
    from navigator.physics.dvh import DVH

    return DVH.from_dose(dose_gy, weights, voxel_cc).d_pct(90.0)


def make_study(spec: CohortSpec, index: int) -> SyntheticStudy:
    """Patient ``index`` (0-based) of the cohort ``spec``: anatomy, implant, true D90 and outcome."""
    from navigator.physics import tg43
    from simulators.phantoms import make_patient, random_rigid

    rng = np.random.default_rng([int(spec.seed), index, 17])
    diameter = float(rng.uniform(*spec.node_diameter_mm))
    case = "neck_ffs" if rng.uniform() < 0.25 else "neck"
    scan_len = spec.n_slices * spec.slice_mm
    # the anatomy only: its pre-plan CT is not written, so it is rendered coarse (the length must cover the scan)
    patient = make_patient(case, seed=int(spec.seed) * 1000 + index, node_diameter_mm=diameter, slice_mm=10.0,
                           n_slices=math.ceil((scan_len + 40.0) / 10.0), matrix=(64, 64))
    needles, seeds, axes, needle_of = lattice_implant(patient, spec.needle_pitch_mm, spec.seed_pitch_mm)
    model = tg43.load_seed_model(spec.seed_model)
    a, w, vcc = truth_influence(patient, seeds, axes, model, spec.truth_grid_mm)

    # the cold side: seeds furthest along a random direction go first
    v = rng.normal(size=3)
    order = list(np.argsort(-(seeds - seeds.mean(0)) @ (v / np.linalg.norm(v)), kind="stable"))
    target = float(rng.uniform(*spec.d90_range)) * spec.cutoff_d90_gy
    has_plan = bool(rng.uniform() < spec.plan_fraction)
    if has_plan:
        lost = order[:round(rng.uniform(0.0, spec.max_lost_fraction) * len(seeds))]
        keep = [k for k in range(len(seeds)) if k not in set(lost)]
        d90_unit = d90_of(a[:, keep].sum(1), w, vcc)
        sk = float(np.clip(target / d90_unit, *spec.sk_range_u))
        sk = round(sk, 4)
    else:
        sk = float(spec.default_sk_u)
        removed = 0
        while removed < int(0.6 * len(seeds)):
            keep = [k for k in range(len(seeds)) if k not in set(order[:removed + 1])]
            if d90_of(sk * a[:, keep].sum(1), w, vcc) < target:
                break
            removed += 1
        keep = [k for k in range(len(seeds)) if k not in set(order[:removed])]
    d90 = d90_of(sk * a[:, keep].sum(1), w, vcc)

    p = float(spec.response_probability(d90))
    response = int(rng.uniform() < p)
    rate = spec.baseline_hazard_per_month * (spec.hazard_ratio_below if d90 < spec.cutoff_d90_gy else 1.0)
    t_event = float(rng.exponential(1.0 / rate))
    t_censor = float(rng.uniform(*spec.follow_up_months))
    motion = random_rigid(rng, 10.0, 5.0, center_mm=patient.node_center_mm)
    scanner = str(rng.choice(list(spec.scanners)))
    target_name = str(rng.choice(list(spec.targets_named)))
    return SyntheticStudy(
        index=index, patient_id=f"COH{int(spec.seed):02d}-{index + 1:03d}", patient=patient, motion=motion,
        needles=needles, seeds_pre_mm=seeds[keep], axes_pre=axes[keep], needle_of_seed=[needle_of[k] for k in keep],
        seeds_designed=len(seeds), sk_u=sk, has_plan=has_plan, d90_gy=d90, p_response=p, response=response,
        time_months=round(min(t_event, t_censor), 2), event=int(t_event <= t_censor), scanner=scanner,
        target_name=target_name, extra={"node_diameter_mm": diameter, "case": case, "d90_drawn_gy": target})
