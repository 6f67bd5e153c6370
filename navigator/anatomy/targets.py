"""Planning volumes from a CT and its structures: body, skin depth, CTV, needle no-go regions, OAR limits.

All masks are numpy bool arrays shaped like ``Volume.array`` (k, j, i) of the grid they are computed on
(the planning CT unless stated). Distances are mm, doses Gy (total dose of the permanent implant).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from navigator.anatomy.structures import expand_margin
from navigator.core.volume import Volume

BODY_HU = -400.0        # soft tissue vs air/lung boundary for the outer contour
BONE_HU = 300.0         # cortical/trabecular bone (and contrast-filled vessels, no-go as well)
INTERNAL_AIR_HU = -500  # airway, lung, bowel gas inside the body contour

# Default OAR dose limits for a permanent I-125 implant (total dose, Gy). D0.1cc is used because a few
# voxels next to a seed are always hot; a structure not listed gets the "other" limit.
# Cord: conventional tolerance kept with margin (the low dose rate spares it a little more, not relied on).
# Vessel walls, airway and oesophagus next to nodes are routinely treated to the prescription in the
# node series; 1.5 x Rx at D0.1cc keeps them out of the hottest seed clusters.
OAR_CLASS_LIMITS = {
    "cord": {"D0.1cc_gy": 50.0},
    "brainstem": {"D0.1cc_gy": 50.0},
    "vessel": {"D0.1cc_rx": 1.5},
    "airway": {"D0.1cc_rx": 1.5},
    "esophagus": {"D0.1cc_rx": 1.5},
    "skin": {"D0.1cc_rx": 1.0},
    "bone": {"D0.1cc_rx": 2.0},
    "other": {"D0.1cc_rx": 1.5},
}

_CLASS_WORDS = [
    ("cord", ("cord", "spinal", "myel")),
    ("brainstem", ("brainstem", "brain_stem", "brain stem")),
    ("vessel", ("carotid", "jugular", "aorta", "arter", "vein", "vessel", "vena", "ivc", "svc", "subclav",
                "brachioceph", "pulmonary", "innominate", "azygos", "cca", "ica", "ija")),
    ("airway", ("trachea", "airway", "bronch", "larynx", "pharynx", "lung")),
    ("esophagus", ("esophag", "oesophag")),
    ("skin", ("skin", "body", "external")),
    ("bone", ("bone", "vertebra", "mandible", "rib", "sternum", "clavicle", "spine", "femur", "humerus")),
]

TARGET_WORDS = ("gtv", "ctv", "ptv", "itv")


def classify_oar(name: str) -> str:
    """OAR class of a structure name: cord, brainstem, vessel, airway, esophagus, skin, bone or other."""
    n = name.lower()
    for cls, words in _CLASS_WORDS:
        if any(w in n for w in words):
            return cls
    return "other"


def is_body_name(name: str) -> bool:
    """A structure outlining the whole patient (BODY, External, Outline)."""
    n = name.lower()
    return any(w in n for w in ("body", "external", "outline")) and "skin" not in n


def is_target_name(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in TARGET_WORDS)


def oar_limit(name: str, rx_gy: float) -> dict:
    """The D0.1cc limit (Gy) for an OAR and where it comes from: ``{"class", "D0.1cc_gy", "basis"}``."""
    cls = classify_oar(name)
    lim = OAR_CLASS_LIMITS[cls]
    if "D0.1cc_gy" in lim:
        return {"class": cls, "D0.1cc_gy": float(lim["D0.1cc_gy"]), "basis": f"{lim['D0.1cc_gy']:g} Gy"}
    return {"class": cls, "D0.1cc_gy": float(lim["D0.1cc_rx"] * rx_gy), "basis": f"{lim['D0.1cc_rx']:g} x Rx"}


def needle_nogo_class(name: str) -> bool:
    """Whether needles must not pass through an OAR of this name (everything but skin/body)."""
    return classify_oar(name) != "skin"


# --- masks on the CT grid -------------------------------------------------------------------------------
def body_mask(ct: Volume, threshold_hu: float = BODY_HU) -> np.ndarray:
    """The patient's outer contour: the largest tissue component, with internal air (lung, airway) filled."""
    tissue = ct.array > threshold_hu
    lab, n = ndimage.label(tissue)
    if n == 0:
        return np.zeros(ct.array.shape, bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    # Fill per axial slice: lung and airway are open to the edge of a cropped slice in 3D but closed in 2D.
    # A thin chest wall can break up in noise and let the lung "leak" outside: close small gaps first
    # (a closing moves no convex outline; concave creases fill by at most the closing radius).
    ring = ndimage.generate_binary_structure(2, 1)
    for k in range(body.shape[0]):
        closed = ndimage.binary_closing(np.pad(body[k], 3), structure=ring, iterations=3)[3:-3, 3:-3]
        body[k] = ndimage.binary_fill_holes(closed | body[k])
    return body


def skin_depth_mm(body: np.ndarray, grid: Volume, near: np.ndarray | None = None,
                  reach_mm: float = 40.0) -> np.ndarray:
    """Depth below the skin (mm) of every voxel inside the body (0 outside).

    The volume's own edges are not skin: a cropped CT (body cut by the field of view) is padded with
    tissue before the distance transform, so depth is measured only to air that the CT actually shows.
    With ``near`` (a mask, e.g. the CTV) the transform runs only on its bounding box grown by
    ``reach_mm``: depths there are exact up to ``reach_mm`` and reported as >= ``reach_mm`` beyond
    (the limit checked is 10 mm); body voxels outside the box get ``reach_mm``.
    """
    sampling = (grid.spacing_mm[2], grid.spacing_mm[1], grid.spacing_mm[0])  # (k, j, i) order
    box = tuple(slice(None) for _ in range(3))
    if near is not None and near.any():
        idx = np.nonzero(near)
        m = [int(np.ceil(reach_mm / sp)) + 1 for sp in sampling]
        box = tuple(slice(max(0, int(a.min()) - mm), min(n, int(a.max()) + mm + 1))
                    for a, mm, n in zip(idx, m, body.shape))
    sub = body[box]
    padded = np.pad(sub, 1, mode="constant", constant_values=True)
    dist, nearest = ndimage.distance_transform_edt(padded, sampling=sampling, return_indices=True)
    # The EDT runs centre to centre; the skin is the face of the nearest air voxel. Walk back from that
    # voxel's centre to where the line towards this voxel leaves its box: half a voxel along the axis the
    # line leaves by (exact for any direction on anisotropic voxels).
    idx = np.indices(padded.shape)
    v = [(idx[a] - nearest[a]) * sampling[a] for a in range(3)]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.min([np.where(v[a] != 0, 0.5 * sampling[a] / np.abs(v[a]), np.inf) for a in range(3)], axis=0)
    depth_sub = (dist * (1.0 - np.minimum(t, 1.0)))[1:-1, 1:-1, 1:-1]
    if near is not None:
        depth_sub = np.minimum(depth_sub, reach_mm)
    depth = np.where(body, np.float32(reach_mm if near is not None else 0.0), np.float32(0.0))
    depth[box] = np.where(sub, depth_sub, 0.0)
    return np.maximum(depth, 0.0).astype(np.float32)


def bone_mask(ct: Volume, threshold_hu: float = BONE_HU) -> np.ndarray:
    """Bone (and anything as dense), opened once so single noisy voxels do not block needles."""
    return ndimage.binary_opening(ct.array > threshold_hu, structure=ndimage.generate_binary_structure(3, 1))


def internal_air_mask(ct: Volume, body: np.ndarray, threshold_hu: float = INTERNAL_AIR_HU) -> np.ndarray:
    """Air inside the body contour (airway, lung, gas), at least 3 voxels big."""
    air = (ct.array < threshold_hu) & body
    return ndimage.binary_opening(air, iterations=1)


def dilate_mm(mask: np.ndarray, grid: Volume, margin_mm: float) -> np.ndarray:
    """Isotropic dilation by ``margin_mm``: a voxel joins when its centre is within ``margin_mm`` of a mask
    voxel's centre (anisotropic voxels handled); what would lie beyond the grid is dropped. The one margin
    algorithm, ``structures.expand_margin``, with its centre rule."""
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    return expand_margin(mask, grid, margin_mm, rule="centre", beyond_grid="clip")


def inner_depth_mm(mask: np.ndarray, grid: Volume) -> np.ndarray:
    """Distance (mm) from each voxel inside ``mask`` to the mask's outside (0 outside)."""
    sampling = (grid.spacing_mm[2], grid.spacing_mm[1], grid.spacing_mm[0])
    return ndimage.distance_transform_edt(mask, sampling=sampling).astype(np.float32)


def ctv_mask(gtv: np.ndarray, grid: Volume, margin_mm: float = 5.0, body: np.ndarray | None = None,
             rule: str = "centre", beyond_grid: str = "clip") -> np.ndarray:
    """CTV = GTV grown by ``margin_mm`` and clipped to the body, by ``structures.expand_margin`` with its
    ``rule`` (``"surface"``: never smaller than the margin asks, as the planner and the post-implant evaluation
    use it; ``"centre"``: centre-to-centre) and ``beyond_grid`` (``"error"``: StructureError when the margin
    would reach beyond the grid; ``"clip"``: grow what the grid holds)."""
    ctv = expand_margin(gtv, grid, margin_mm, rule=rule, beyond_grid=beyond_grid) if margin_mm > 0 else gtv.copy()
    if body is not None:
        ctv &= body
    return ctv


def nogo_mask(ct: Volume, body: np.ndarray, oar_masks: dict[str, np.ndarray], clearance_mm: float = 1.0,
              include_bone: bool = True, include_air: bool = True,
              track_step_mm: float | None = None) -> tuple[np.ndarray, dict]:
    """Where needles must not go: bone, internal air (airway/lung) and every OAR but the skin,
    grown by ``clearance_mm``. Returns the mask and the voxel count per component (for the report).

    Without ``track_step_mm``: a voxel joins when its centre is within ``clearance_mm`` of a no-go voxel's centre.
    With ``track_step_mm`` (the step at which a needle track is sampled, each sample reading the voxel nearest
    to it): grown so that a track none of whose samples (end points included) reads no-go keeps at least
    ``clearance_mm`` from every no-go voxel, the voxel taken as its box (the structure as rasterised), at every
    point of the track — see ``_grow_for_tracks``."""
    parts = {}
    if include_bone:
        parts["bone"] = bone_mask(ct) & body
    if include_air:
        parts["internal_air"] = internal_air_mask(ct, body)
    for name, m in oar_masks.items():
        if needle_nogo_class(name):
            parts[name] = m
    nogo = np.zeros(ct.array.shape, bool)
    for m in parts.values():
        nogo |= m
    if track_step_mm is None:
        nogo = dilate_mm(nogo, ct, clearance_mm)
    else:
        nogo = _grow_for_tracks(nogo, ct, clearance_mm, track_step_mm)
    return nogo, {k: int(v.sum()) for k, v in parts.items()}


def _grow_for_tracks(mask: np.ndarray, grid: Volume, clearance_mm: float, track_step_mm: float) -> np.ndarray:
    """``mask`` grown so that any point of a track sampled every ``track_step_mm`` (nearest-voxel reads, end
    points included) whose samples all read outside the result lies >= ``clearance_mm`` from every box of
    ``mask``'s voxels.

    Why: a point lies within ``track_step_mm / 2`` of a sample; the sample lies within half a voxel (per axis) of
    the voxel centre it reads; a mask voxel's box reaches half a voxel beyond its centre. So a voxel centre ``v``
    must be no-go when some mask centre ``o`` has ``|| max(|v - o| - voxel, 0) || < clearance + step / 2`` (per
    axis, mm): the centre-rule ball of that radius dilated by one voxel in every direction (3x3x3), which this
    is, exactly. Conservative by at most one voxel per axis for a track that happens to pass a voxel corner."""
    from scipy import ndimage

    if not mask.any():
        return mask.copy()
    cube = ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))
    return dilate_mm(cube, grid, float(clearance_mm) + 0.5 * float(track_step_mm))
