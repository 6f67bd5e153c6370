"""Analytic anatomy of the synthetic patients: a neck and a mediastinum, in the pre-plan LPS frame (mm).

LPS: +x patient left, +y posterior, +z superior. The patient's right side is -x, anterior is -y.
HU values are those of a contrast-enhanced CT (arterial to early venous phase). Every random choice comes from
the ``rng`` passed in, so the same seed gives the same patient.

Structures (names as in the RT Structure Set): ``GTV`` (the node, necrotic centre included), ``BODY`` (the
body outline, filled), ``Skin`` (the outer 3 mm of BODY), and organs at risk: neck — ``CarotidArtery_R/L``,
``JugularVein_R/L``, ``Trachea``, ``Esophagus``, ``Spine``, ``SpinalCord``; mediastinum — ``Aorta``,
``PulmonaryArtery``, ``SVC``, ``Trachea``, ``MainBronchus_R/L``, ``Lung_R/L``, ``Esophagus``, ``Sternum``,
``Spine``, ``SpinalCord``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _kernels as K
from .shapes import Scene, blob, blob_radial_integral, capsule, ellipsoid, secyl, tube

HU = {
    "air": -1000.0, "lung": -850.0, "fat": -100.0, "skin": 30.0, "muscle": 45.0, "esophagus": 40.0,
    "cartilage": 110.0, "artery": 250.0, "vein": 170.0, "svc": 300.0, "pa": 220.0, "heart": 130.0,
    "node": 55.0, "necrosis": 15.0, "csf": 10.0, "cord": 35.0, "cortical": 900.0, "cancellous": 250.0,
    "disc": 80.0, "lung_vessel": 40.0, "soft": 30.0,
}
SKIN_MM = 3.0
SUBCUT_FAT_MM = 11.0   # subcutaneous fat of the neck under the skin


@dataclass
class Anatomy:
    """A built patient model: the scene plus what the truth file needs."""

    scene: Scene
    node_center_mm: np.ndarray
    node_row: int                      # index of the node's shape in the scene
    node_volume_mm3: float             # analytic volume of the node shape (before other organs cut into it)
    necrosis_row: int | None
    fov_lo_mm: np.ndarray              # the box a pre-plan CT should cover (LPS)
    fov_hi_mm: np.ndarray
    params: dict = field(default_factory=dict)


def _rz(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _node(scene: Scene, rng, center, diameter_mm: float, necrosis: bool | None):
    """A lobulated node with equivalent-sphere diameter ``diameter_mm`` and (>= 15 mm) a necrotic centre."""
    R = _random_rotation(rng)
    elong = np.array([1.0, rng.uniform(0.8, 0.95), rng.uniform(0.7, 0.9)])
    nl = int(rng.integers(3, K.MAX_LOBES + 1))
    dirs = rng.normal(size=(nl, 3))
    amps = rng.uniform(0.08, 0.2, size=nl)
    kappa = float(rng.uniform(3.0, 6.0))
    unit = blob(center, elong, dirs, amps, kappa, R)
    scale = (np.pi * diameter_mm ** 3 / 6 / blob_radial_integral(unit)) ** (1 / 3)
    row = blob(center, elong * scale, dirs, amps, kappa, R)
    (node_i,) = scene.add(row)
    vol = blob_radial_integral(row)
    nec_i = None
    if necrosis is None:
        necrosis = diameter_mm >= 15.0
    if necrosis:
        off = rng.normal(size=3) * 0.06 * diameter_mm
        (nec_i,) = scene.add(ellipsoid(np.asarray(center) + off, elong * scale * rng.uniform(0.35, 0.5), R))
    return node_i, nec_i, vol


def _vertebrae(scene: Scene, center_xy, a, b, z_lo, z_hi, phase, height=16.0, disc=5.0, cortex=1.5):
    """Vertebral bodies separated by discs: returns (outer shape ids, inner (cancellous) ids)."""
    outer, inner = [], []
    period = height + disc
    z = z_lo - period + phase
    while z < z_hi + period:
        c = (center_xy[0], center_xy[1], z + 0.5 * height)
        outer += scene.add(secyl(c, a, b, 0.5 * height, 2.2))
        inner += scene.add(secyl(c, a, b, 0.5 * height, 2.2, offset_mm=cortex))
        z += period
    return outer, inner


def _wiggle(rng, n, amp):
    return rng.normal(scale=amp, size=(n, 2)).cumsum(0) / np.sqrt(np.arange(1, n + 1))[:, None]


def neck(rng: np.random.Generator, node_diameter_mm: float = 30.0, necrosis: bool | None = None,
         length_mm: float = 160.0, node_side: str = "R") -> Anatomy:
    """Neck at C4-C6: metastatic node beside the carotid sheath on ``node_side`` (R/L)."""
    s = Scene()
    c0 = np.array([rng.uniform(-15, 15), rng.uniform(-40, 40), rng.uniform(-450, -150)])
    zlo, zhi = c0[2] - 0.5 * length_mm, c0[2] + 0.5 * length_mm
    hl = 0.5 * length_mm + 20.0
    scale = rng.uniform(0.92, 1.08)
    A, B = 58.0 * scale, 52.0 * scale
    side = -1.0 if node_side.upper() == "R" else 1.0

    def at(x, y, z=0.0):
        return c0 + np.array([x, y, z])

    # vessels first (their geometry fixes where the node goes)
    zs = np.linspace(-hl, hl, 5)
    vessels = {}
    for sgn, tag in ((-1.0, "R"), (1.0, "L")):
        wig = _wiggle(rng, 5, 1.5)
        car = [at(sgn * 22 * scale + wig[n, 0], -12 * scale + wig[n, 1], zs[n]) for n in range(5)]
        jug = [at(sgn * 31 * scale + wig[n, 0], -7 * scale + wig[n, 1], zs[n]) for n in range(5)]
        vessels[tag] = (car, jug)
    node_z = rng.uniform(-12, 12)
    jug_c = at(side * 31 * scale, -7 * scale, node_z)
    r_node = 0.5 * node_diameter_mm
    ang = np.deg2rad(rng.uniform(20, 60))
    direction = np.array([side * np.cos(ang), -np.sin(ang), 0.0])
    node_c = jug_c + direction * (6.5 + 0.75 * r_node)

    # a big node bulges the neck: the outline grows to keep >= ~12 mm of tissue over it
    bulge_c = node_c + 0.3 * (np.array([c0[0], c0[1], node_c[2]]) - node_c)
    bulge_ax = np.linalg.norm((node_c - bulge_c)[:2]) + r_node + 12.0
    body = s.add(secyl(c0, A, B, hl, 2.4), ellipsoid(bulge_c, (bulge_ax, bulge_ax, bulge_ax + 15)))
    body_inner = s.add(secyl(c0, A, B, hl, 2.4, offset_mm=SKIN_MM),
                       ellipsoid(bulge_c, (bulge_ax, bulge_ax, bulge_ax + 15), offset_mm=SKIN_MM))
    s.layer(HU["skin"], body)
    s.layer(HU["fat"], body_inner)
    # A real neck is mostly muscle, glands and fascia under a subcutaneous fat layer, with fat planes around
    # the carotid sheaths (where the nodes lie): soft tissue with a median of +12 to +29 HU like the real CTs
    # in ../shared/data, not the fat-filled outline (median -76 HU) this phantom had before.
    deep = s.add(secyl(c0, A, B, hl, 2.4, offset_mm=SKIN_MM + SUBCUT_FAT_MM),
                 ellipsoid(bulge_c, (bulge_ax, bulge_ax, bulge_ax + 15), offset_mm=SKIN_MM + SUBCUT_FAT_MM))
    s.layer(HU["soft"], deep)
    sheath_fat = [s.add(ellipsoid(at(sgn * 27 * scale, -9 * scale), (15 * scale, 13 * scale, hl)))[0]
                  for sgn in (-1.0, 1.0)]
    s.layer(HU["fat"], sheath_fat + s.add(ellipsoid(node_c, (r_node + 5.0,) * 3)))
    muscles = s.add(ellipsoid(at(0, 26 * scale), (40 * scale, 24 * scale, hl)),
                    ellipsoid(at(-38 * scale, -4 * scale), (8, 19, hl), _rz(-35)),
                    ellipsoid(at(38 * scale, -4 * scale), (8, 19, hl), _rz(35)),
                    ellipsoid(at(0, -30 * scale), (22 * scale, 4, hl)))
    s.layer(HU["muscle"], muscles)
    node_i, nec_i, node_vol = _node(s, rng, node_c, node_diameter_mm, necrosis)
    s.layer(HU["node"], [node_i])
    if nec_i is not None:
        s.layer(HU["necrosis"], [nec_i])
    # airway and oesophagus
    trach_c = (0.0, -22.0 * scale)
    trachea = s.add(secyl(at(*trach_c), 10.5, 9.5, hl, 2.0))
    lumen = s.add(secyl(at(*trach_c), 10.5, 9.5, hl, 2.0, offset_mm=2.0))
    s.layer(HU["cartilage"], trachea)
    s.layer(HU["air"], lumen)
    eso = s.add(secyl(at(4.0, -7.0 * scale), 8.0, 5.0, hl, 2.0))
    s.layer(HU["esophagus"], eso)
    # spine: vertebral bodies + discs, posterior arch, canal, cord
    vb_xy = (c0[0], c0[1] + 10 * scale)
    discs = s.add(secyl((*vb_xy, c0[2]), 9.5, 8.0, hl, 2.2))
    s.layer(HU["disc"], discs)
    v_out, v_in = _vertebrae(s, vb_xy, 9.5, 8.0, zlo - 20, zhi + 20, rng.uniform(0, 21))
    arch = s.add(secyl(at(0, 26 * scale), 14.0, 10.0, hl, 2.0),
                 ellipsoid(at(0, 41 * scale), (3.5, 9.0, hl)))
    canal = s.add(secyl(at(0, 25 * scale), 8.0, 6.5, hl, 2.0))
    cord = s.add(ellipsoid(at(0, 25 * scale), (5.0, 3.8, hl)))
    s.layer(HU["cortical"], v_out + arch)
    s.layer(HU["cancellous"], v_in + s.add(secyl(at(0, 26 * scale), 14.0, 10.0, hl, 2.0, offset_mm=1.5)))
    s.layer(HU["csf"], canal)
    s.layer(HU["cord"], cord)
    # carotid sheath: jugular vein lateral, common carotid medial
    vess_ids = {}
    for tag, (car, jug) in vessels.items():
        j_ids = s.add(tube(jug, 6.5))
        c_ids = s.add(tube(car, 3.6))
        s.layer(HU["vein"], j_ids)
        s.layer(HU["artery"], c_ids)
        vess_ids[tag] = (c_ids, j_ids)

    s.structure("BODY", body)
    s.structure("Skin", body, body_inner)
    all_vessels = [i for c, j in vess_ids.values() for i in c + j]
    s.structure("GTV", [node_i], all_vessels + trachea + eso)
    for tag, (c_ids, j_ids) in vess_ids.items():
        s.structure(f"CarotidArtery_{tag}", c_ids)
        s.structure(f"JugularVein_{tag}", j_ids, c_ids)
    s.structure("Trachea", trachea)
    s.structure("Esophagus", eso, trachea)
    s.structure("Spine", v_out + arch, canal)
    s.structure("SpinalCord", cord)

    half_fov = np.array([A + r_node + 30, B + r_node + 30, 0.5 * length_mm])
    return Anatomy(s, node_c, node_i, node_vol, nec_i, c0 - half_fov, c0 + half_fov,
                   {"site": "neck", "body_center_mm": c0.tolist(), "node_side": node_side.upper()})


def mediastinum(rng: np.random.Generator, node_diameter_mm: float = 30.0, necrosis: bool | None = None,
                length_mm: float = 160.0, station: str = "subcarinal") -> Anatomy:
    """Chest at the carina (T4-T6): a subcarinal (station 7) or right paratracheal (4R) node."""
    s = Scene()
    c0 = np.array([rng.uniform(-15, 15), rng.uniform(-30, 30), rng.uniform(-350, -50)])
    hl = 0.5 * length_mm + 20.0
    sc = rng.uniform(0.94, 1.06)
    A, B = 160.0 * sc, 108.0 * sc
    zc = c0[2] + rng.uniform(10, 25)          # carina
    r_node = 0.5 * node_diameter_mm

    def at(x, y, z=None):
        return np.array([c0[0] + x, c0[1] + y, c0[2] if z is None else z])

    if station == "subcarinal":
        node_c = at(3.0, 28.0 * sc, zc - 6.0 - 0.9 * r_node)
    elif station in ("paratracheal", "4R"):
        node_c = at(-12.0 - 0.8 * r_node, 18.0 * sc, zc + 12.0 + 0.6 * r_node)
    else:
        raise ValueError(f"station must be 'subcarinal' or 'paratracheal', got {station!r}")

    body = s.add(secyl(c0, A, B, hl, 2.2))
    body_inner = s.add(secyl(c0, A, B, hl, 2.2, offset_mm=SKIN_MM))
    wall = s.add(secyl(c0, A, B, hl, 2.2, offset_mm=9.0))
    s.layer(HU["skin"], body)
    s.layer(HU["fat"], body_inner)
    s.layer(HU["muscle"], wall)
    medi = s.add(secyl(at(0, 0), 42 * sc, 95 * sc, hl, 2.0))
    s.layer(HU["fat"], medi)
    lung_r = s.add(secyl(at(-82 * sc, 8 * sc), 58 * sc, 82 * sc, hl, 2.6))
    lung_l = s.add(secyl(at(84 * sc, 12 * sc), 56 * sc, 80 * sc, hl, 2.6))
    s.layer(HU["lung"], lung_r + lung_l)
    # lung vessels: short soft-tissue tubes (texture for registration and realism)
    lv = []
    for lung_c, la, lb in (((-82 * sc, 8 * sc), 58 * sc, 82 * sc), ((84 * sc, 12 * sc), 56 * sc, 80 * sc)):
        for _ in range(30):
            p = at(lung_c[0] + rng.uniform(-0.7, 0.7) * la, lung_c[1] + rng.uniform(-0.7, 0.7) * lb,
                   c0[2] + rng.uniform(-hl, hl))
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            ln = rng.uniform(15, 45)
            lv += s.add(capsule(p, p + ln * d, rng.uniform(1.5, 3.0), rng.uniform(0.8, 1.5)))
    s.layer(HU["lung_vessel"], lv, [])
    heart = s.add(ellipsoid(at(10, -40 * sc, zc - 95), (70 * sc, 55 * sc, 60)))
    s.layer(HU["heart"], heart)
    # spine, paraspinal muscles, sternum
    vb_xy = (c0[0], c0[1] + 62 * sc)
    para = s.add(ellipsoid(at(-30, 92 * sc), (20, 15, hl)), ellipsoid(at(30, 92 * sc), (20, 15, hl)))
    s.layer(HU["muscle"], para)
    discs = s.add(secyl((*vb_xy, c0[2]), 17.0, 15.0, hl, 2.2))
    s.layer(HU["disc"], discs)
    v_out, v_in = _vertebrae(s, vb_xy, 17.0, 15.0, c0[2] - hl, c0[2] + hl, rng.uniform(0, 26), height=21.0)
    arch = s.add(secyl(at(0, 87 * sc), 17.0, 12.0, hl, 2.0), ellipsoid(at(0, 102 * sc), (4.0, 9.0, hl)))
    arch_in = s.add(secyl(at(0, 87 * sc), 17.0, 12.0, hl, 2.0, offset_mm=1.5))
    canal = s.add(secyl(at(0, 86 * sc), 9.0, 8.0, hl, 2.0))
    cord = s.add(ellipsoid(at(0, 86 * sc), (5.0, 4.0, hl)))
    s.layer(HU["cortical"], v_out + arch)
    s.layer(HU["cancellous"], v_in + arch_in)
    s.layer(HU["csf"], canal)
    s.layer(HU["cord"], cord)
    sternum = s.add(secyl(at(0, -B + 12), 18.0, 6.5, hl, 3.0))
    s.layer(HU["cortical"], sternum)
    s.layer(HU["cancellous"], s.add(secyl(at(0, -B + 12), 18.0, 6.5, hl, 3.0, offset_mm=1.5)))
    # node before the airway and vessels: they displace it, they are not painted over
    node_i, nec_i, node_vol = _node(s, rng, node_c, node_diameter_mm, necrosis)
    s.layer(HU["node"], [node_i])
    if nec_i is not None:
        s.layer(HU["necrosis"], [nec_i])
    # oesophagus behind the carina, left of midline
    eso = s.add(secyl(at(8, 46 * sc), 8.0, 6.0, hl, 2.0))
    s.layer(HU["esophagus"], eso)
    # airway: trachea -> carina -> main bronchi
    tr = at(0, 22 * sc, zc)
    trachea = s.add(tube([at(0, 18 * sc, c0[2] + hl), tr], 9.5))
    br_r = s.add(tube([tr, tr + (-30, 5, -20), tr + (-58, 10, -42)], [8.0, 7.0, 5.0]))
    br_l = s.add(tube([tr, tr + (40, 7, -30), tr + (68, 12, -52)], [8.0, 6.5, 4.5]))
    s.layer(HU["cartilage"], trachea + br_r + br_l)
    lumens = s.add(tube([at(0, 18 * sc, c0[2] + hl), tr], 9.5, offset_mm=1.8),
                   tube([tr, tr + (-30, 5, -20), tr + (-58, 10, -42)], [8.0, 7.0, 5.0], offset_mm=1.5),
                   tube([tr, tr + (40, 7, -30), tr + (68, 12, -52)], [8.0, 6.5, 4.5], offset_mm=1.5))
    s.layer(HU["air"], lumens)
    # great vessels: aorta (ascending, arch, descending), pulmonary trunk and arteries, SVC
    za = zc + 38.0
    asc = at(-8, -40 * sc)
    desc = at(24, 48 * sc)
    arc = [np.array([asc[0] + (desc[0] - asc[0]) * (1 - np.cos(t)) / 2,
                     asc[1] + (desc[1] - asc[1]) * (1 - np.cos(t)) / 2, za + 22 * np.sin(t)])
           for t in np.linspace(0, np.pi, 7)]
    aorta = s.add(tube([np.array([asc[0], asc[1], c0[2] - hl])] + arc + [np.array([desc[0], desc[1], c0[2] - hl])],
                       [15.0] + [15.0, 14.5, 14.0, 13.5, 13.0, 12.5, 12.0] + [11.5]))
    pt0 = at(18, -48 * sc, zc - 45)
    pt1 = at(14, -28 * sc, zc - 5)
    pa = s.add(tube([pt0, pt1], 13.0), tube([pt1, at(-20, -10 * sc, zc - 8), at(-55, 0, zc - 12)], [11.0, 10.0, 8.0]),
               tube([pt1, at(45, -5 * sc, zc), at(62, 5, zc - 4)], [11.0, 9.5, 8.0]))
    svc = s.add(tube([at(-32, -26 * sc, c0[2] + hl), at(-30, -28 * sc, zc - 40)], 10.0))
    s.layer(HU["pa"], pa)
    s.layer(HU["svc"], svc)
    s.layer(HU["artery"], aorta)

    s.structure("BODY", body)
    s.structure("Skin", body, body_inner)
    airway = trachea + br_r + br_l
    s.structure("GTV", [node_i], airway + aorta + pa + svc + eso)
    s.structure("Aorta", aorta)
    s.structure("PulmonaryArtery", pa, aorta)
    s.structure("SVC", svc, aorta + pa)
    s.structure("Trachea", trachea)
    s.structure("MainBronchus_R", br_r, trachea)
    s.structure("MainBronchus_L", br_l, trachea + br_r)
    mediastinal = medi + heart + airway + aorta + pa + svc
    s.structure("Lung_R", lung_r, mediastinal)
    s.structure("Lung_L", lung_l, mediastinal)
    s.structure("Esophagus", eso, airway + aorta + [node_i])
    s.structure("Sternum", sternum)
    s.structure("Spine", v_out + arch, canal)
    s.structure("SpinalCord", cord)

    half_fov = np.array([A + 12, B + 12, 0.5 * length_mm])
    return Anatomy(s, node_c, node_i, node_vol, nec_i, c0 - half_fov, c0 + half_fov,
                   {"site": "mediastinum", "body_center_mm": c0.tolist(), "station": station,
                    "carina_z_mm": float(zc)})
