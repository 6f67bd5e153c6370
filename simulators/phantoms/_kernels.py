"""Compiled loops: analytic shapes -> partial-volume images on a CT grid.

Private to ``simulators.phantoms``. Shapes are rows of a float64 table (layout below), in the pre-plan LPS
frame (mm). A scan voxel is mapped to the pre-plan frame by ``scan_to_preplan`` (4x4 rigid) and then by the
Gaussian-RBF deformation (``x = z + sum_m w_m exp(-|z - c_m|^2 / 2 s^2)``), evaluated at sub-samples along the
slice axis (the slice profile) and turned into occupancy by a ramp of the in-plane voxel width on the signed
distance (the in-plane partial volume).

Index order here is numpy's: arrays are (k, j, i); ``ijk`` vectors are (i, j, k).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# --- shape table layout ----------------------------------------------------------------------------------
NP = 48
T_ELLIPSOID, T_SECYL, T_CAPSULE, T_BLOB = 1.0, 2.0, 3.0, 4.0
C0 = 1          # centre (3)
R0 = 4          # rotation, row-major 3x3 whose columns are the local axes in LPS (9)
OFF = 13        # offset added to the signed distance (mm); > 0 shrinks the shape
BOUND = 14      # bounding-sphere radius about the centre (mm), before the offset
P0 = 15         # type-specific parameters start here
MAX_LOBES = 6


@njit(cache=True)
def _sdf(row, x, y, z):
    """Signed distance (mm, < 0 inside, approximate away from the surface) of point (x, y, z) to one shape."""
    t = row[0]
    dx = x - row[1]
    dy = y - row[2]
    dz = z - row[3]
    if t == T_CAPSULE:
        # cone-capsule from p0 (radius r0) to p1 (radius r1), global coordinates
        ax = row[P0 + 3] - row[P0]
        ay = row[P0 + 4] - row[P0 + 1]
        az = row[P0 + 5] - row[P0 + 2]
        px = x - row[P0]
        py = y - row[P0 + 1]
        pz = z - row[P0 + 2]
        L2 = ax * ax + ay * ay + az * az
        s = (px * ax + py * ay + pz * az) / L2 if L2 > 0 else 0.0
        s = min(1.0, max(0.0, s))
        qx = px - s * ax
        qy = py - s * ay
        qz = pz - s * az
        return math.sqrt(qx * qx + qy * qy + qz * qz) - (row[P0 + 6] + s * (row[P0 + 7] - row[P0 + 6])) + row[OFF]
    # local coordinates: R^T (p - c)
    lx = row[R0] * dx + row[R0 + 3] * dy + row[R0 + 6] * dz
    ly = row[R0 + 1] * dx + row[R0 + 4] * dy + row[R0 + 7] * dz
    lz = row[R0 + 2] * dx + row[R0 + 5] * dy + row[R0 + 8] * dz
    if t == T_ELLIPSOID:
        a = row[P0]
        b = row[P0 + 1]
        c = row[P0 + 2]
        k0 = math.sqrt((lx / a) ** 2 + (ly / b) ** 2 + (lz / c) ** 2)
        k1 = math.sqrt((lx / (a * a)) ** 2 + (ly / (b * b)) ** 2 + (lz / (c * c)) ** 2)
        if k1 < 1e-12:
            return -min(a, min(b, c)) + row[OFF]
        return k0 * (k0 - 1.0) / k1 + row[OFF]
    if t == T_SECYL:
        a = row[P0]
        b = row[P0 + 1]
        n = row[P0 + 2]
        h = row[P0 + 3]
        rho = ((abs(lx) / a) ** n + (abs(ly) / b) ** n) ** (1.0 / n)
        rxy = math.sqrt(lx * lx + ly * ly)
        if rho > 1e-9:
            dxy = (rho - 1.0) * rxy / rho
        else:
            dxy = -min(a, b)
        dzz = abs(lz) - h
        if dxy > 0.0 and dzz > 0.0:
            return math.sqrt(dxy * dxy + dzz * dzz) + row[OFF]
        return max(dxy, dzz) + row[OFF]
    if t == T_BLOB:
        a = row[P0]
        b = row[P0 + 1]
        c = row[P0 + 2]
        qx = lx / a
        qy = ly / b
        qz = lz / c
        rho = math.sqrt(qx * qx + qy * qy + qz * qz)
        rmm = math.sqrt(lx * lx + ly * ly + lz * lz)
        if rho < 1e-9:
            return -min(a, min(b, c)) + row[OFF]
        ux = qx / rho
        uy = qy / rho
        uz = qz / rho
        nl = int(row[P0 + 3])
        kappa = row[P0 + 4]
        r = 1.0
        for m in range(nl):
            base = P0 + 5 + 4 * m
            cosang = ux * row[base] + uy * row[base + 1] + uz * row[base + 2]
            r += row[base + 3] * math.exp(kappa * (cosang - 1.0))
        return (rho - r) * rmm / rho + row[OFF]
    return 1e9


@njit(cache=True)
def _occ(row, x, y, z, w):
    """Occupancy in [0, 1] of a sample at (x, y, z) with ramp width w (mm)."""
    dx = x - row[1]
    dy = y - row[2]
    dz = z - row[3]
    # a sample farther than the bound (plus ramp) from the centre cannot be inside
    if dx * dx + dy * dy + dz * dz > (row[BOUND] + w) ** 2:
        return 0.0
    d = _sdf(row, x, y, z)
    o = 0.5 - d / w
    if o <= 0.0:
        return 0.0
    if o >= 1.0:
        return 1.0
    return o


@njit(cache=True)
def _group_occ(shapes, plus_idx, plus_lo, plus_hi, minus_idx, minus_lo, minus_hi, x, y, z, w):
    o = 0.0
    for p in range(plus_lo, plus_hi):
        v = _occ(shapes[plus_idx[p]], x, y, z, w)
        if v > o:
            o = v
            if o >= 1.0:
                break
    if o <= 0.0:
        return 0.0
    m = 0.0
    for p in range(minus_lo, minus_hi):
        v = _occ(shapes[minus_idx[p]], x, y, z, w)
        if v > m:
            m = v
    return max(0.0, o - m)


@njit(cache=True)
def _to_preplan(ijk_i, ijk_j, ijk_k, origin, dir_sp, s2p, dcent, ddisp, dsig):
    """Scan voxel index (continuous) -> pre-plan LPS mm through the rigid and deformable truth."""
    yx = origin[0] + dir_sp[0, 0] * ijk_i + dir_sp[0, 1] * ijk_j + dir_sp[0, 2] * ijk_k
    yy = origin[1] + dir_sp[1, 0] * ijk_i + dir_sp[1, 1] * ijk_j + dir_sp[1, 2] * ijk_k
    yz = origin[2] + dir_sp[2, 0] * ijk_i + dir_sp[2, 1] * ijk_j + dir_sp[2, 2] * ijk_k
    zx = s2p[0, 0] * yx + s2p[0, 1] * yy + s2p[0, 2] * yz + s2p[0, 3]
    zy = s2p[1, 0] * yx + s2p[1, 1] * yy + s2p[1, 2] * yz + s2p[1, 3]
    zz = s2p[2, 0] * yx + s2p[2, 1] * yy + s2p[2, 2] * yz + s2p[2, 3]
    if dcent.shape[0] == 0:
        return zx, zy, zz
    inv2s2 = 0.5 / (dsig * dsig)
    ox = zx
    oy = zy
    oz = zz
    for m in range(dcent.shape[0]):
        ex = zx - dcent[m, 0]
        ey = zy - dcent[m, 1]
        ez = zz - dcent[m, 2]
        g = math.exp(-(ex * ex + ey * ey + ez * ez) * inv2s2)
        ox += g * ddisp[m, 0]
        oy += g * ddisp[m, 1]
        oz += g * ddisp[m, 2]
    return ox, oy, oz


@njit(cache=True)
def _group_occ_tile(shapes, status, plus_idx, plus_lo, plus_hi, minus_idx, minus_lo, minus_hi, x, y, z, w):
    """Group occupancy using the tile's per-shape status (0 outside, 1 inside, 2 cut by the surface)."""
    o = 0.0
    for p in range(plus_lo, plus_hi):
        st = status[plus_idx[p]]
        if st == 1:
            o = 1.0
            break
        if st == 2:
            v = _occ(shapes[plus_idx[p]], x, y, z, w)
            if v > o:
                o = v
    if o <= 0.0:
        return 0.0
    m = 0.0
    for p in range(minus_lo, minus_hi):
        st = status[minus_idx[p]]
        if st == 1:
            return 0.0
        if st == 2:
            v = _occ(shapes[minus_idx[p]], x, y, z, w)
            if v > m:
                m = v
    return max(0.0, o - m)


@njit(cache=True, parallel=True)
def paint(out, lo, origin, dir_sp, s2p, dcent, ddisp, dsig, nsub, w, shapes,
          g_hu, g_plus_idx, g_plus_start, g_minus_idx, g_minus_start, background_hu, tile, safety):
    """Paint groups in order over ``background_hu`` on voxels ``lo + (k, j, i)`` of a scan grid.

    Each output voxel averages ``nsub`` sub-slices (the slice profile). Painting one group of value 1 over 0
    gives that group's occupancy. Work is done per tile (``tile`` x ``tile`` voxels of one slice): a shape
    whose signed distance at the tile centre exceeds ``safety`` x the tile radius is constant over the tile
    (the approximate distances are trusted only to that factor), so only shapes cut by the tile are sampled.
    """
    nk, nj, ni = out.shape
    ng = g_hu.shape[0]
    ns = shapes.shape[0]
    ntj = (nj + tile - 1) // tile
    nti = (ni + tile - 1) // tile
    sp_i = math.sqrt(dir_sp[0, 0] ** 2 + dir_sp[1, 0] ** 2 + dir_sp[2, 0] ** 2)
    sp_j = math.sqrt(dir_sp[0, 1] ** 2 + dir_sp[1, 1] ** 2 + dir_sp[2, 1] ** 2)
    sp_k = math.sqrt(dir_sp[0, 2] ** 2 + dir_sp[1, 2] ** 2 + dir_sp[2, 2] ** 2)
    rad = 0.5 * math.sqrt((tile * sp_i) ** 2 + (tile * sp_j) ** 2 + sp_k ** 2)
    margin = safety * rad + w
    for t in prange(nk * ntj * nti):
        k = t // (ntj * nti)
        r = t - k * ntj * nti
        tj = r // nti
        ti = r - tj * nti
        j0 = tj * tile
        j1 = min(nj, j0 + tile)
        i0 = ti * tile
        i1 = min(ni, i0 + tile)
        ck = lo[0] + k
        cx, cy, cz = _to_preplan(lo[2] + 0.5 * (i0 + i1 - 1), lo[1] + 0.5 * (j0 + j1 - 1), ck,
                                 origin, dir_sp, s2p, dcent, ddisp, dsig)
        status = np.zeros(ns, dtype=np.int8)
        for s in range(ns):
            row = shapes[s]
            dx = cx - row[1]
            dy = cy - row[2]
            dz = cz - row[3]
            if dx * dx + dy * dy + dz * dz > (row[BOUND] + margin) ** 2:
                continue
            d = _sdf(row, cx, cy, cz)
            if d < -margin:
                status[s] = 1
            elif d <= margin:
                status[s] = 2
        # per-group state over the tile: 0 absent, 1 fills it, 2 cut by a surface
        active = np.empty(ng, dtype=np.int64)
        gstate = np.zeros(ng, dtype=np.int8)
        na = 0
        first = 0  # painting can start at the last group that fills the tile
        hu0 = background_hu
        partial = False
        for g in range(ng):
            st = 0
            for p in range(g_plus_start[g], g_plus_start[g + 1]):
                sp = status[g_plus_idx[p]]
                if sp == 1:
                    st = 1
                    break
                if sp == 2:
                    st = 2
            if st == 0:
                continue
            for p in range(g_minus_start[g], g_minus_start[g + 1]):
                sm = status[g_minus_idx[p]]
                if sm == 1:
                    st = 0
                    break
                if sm == 2:
                    st = 2
            if st == 0:
                continue
            gstate[g] = st
            if st == 1:
                first = na
                hu0 = g_hu[g]
            else:
                partial = True
            active[na] = g
            na += 1
        if not partial:
            for j in range(j0, j1):
                for i in range(i0, i1):
                    out[k, j, i] = hu0
            continue
        for j in range(j0, j1):
            for i in range(i0, i1):
                acc = 0.0
                for sb in range(nsub):
                    kk = ck + (sb + 0.5) / nsub - 0.5
                    x, y, z = _to_preplan(lo[2] + i, lo[1] + j, kk, origin, dir_sp, s2p, dcent, ddisp, dsig)
                    hu = hu0
                    for a in range(first, na):
                        g = active[a]
                        if gstate[g] == 1:
                            hu = g_hu[g]
                            continue
                        o = _group_occ_tile(shapes, status, g_plus_idx, g_plus_start[g], g_plus_start[g + 1],
                                            g_minus_idx, g_minus_start[g], g_minus_start[g + 1], x, y, z, w)
                        if o > 0.0:
                            hu += o * (g_hu[g] - hu)
                    acc += hu
                out[k, j, i] = acc / nsub


@njit(cache=True, parallel=True)
def paint_bruteforce(out, origin, dir_sp, s2p, dcent, ddisp, dsig, nsub, w, shapes,
                     g_hu, g_plus_idx, g_plus_start, g_minus_idx, g_minus_start, background_hu):
    """The same image as ``paint`` on the full grid, every shape sampled at every voxel (the reference)."""
    nk, nj, ni = out.shape
    ng = g_hu.shape[0]
    for k in prange(nk):
        for j in range(nj):
            for i in range(ni):
                acc = 0.0
                for s in range(nsub):
                    kk = k + (s + 0.5) / nsub - 0.5
                    x, y, z = _to_preplan(i, j, kk, origin, dir_sp, s2p, dcent, ddisp, dsig)
                    hu = background_hu
                    for g in range(ng):
                        o = _group_occ(shapes, g_plus_idx, g_plus_start[g], g_plus_start[g + 1],
                                       g_minus_idx, g_minus_start[g], g_minus_start[g + 1], x, y, z, w)
                        if o > 0.0:
                            hu += o * (g_hu[g] - hu)
                    acc += hu
                out[k, j, i] = acc / nsub


# --- metal objects: cylinders (needles, flat ends) and capsules (seeds), supersampled ---------------------

@njit(cache=True)
def _inside_rod(px, py, pz, ax, ay, az, ux, uy, uz, length, radius, capsule):
    """Is point p inside a rod from a along unit u of ``length`` and ``radius``? Capsule: rounded ends."""
    qx = px - ax
    qy = py - ay
    qz = pz - az
    s = qx * ux + qy * uy + qz * uz
    if capsule:
        s = min(length, max(0.0, s))
    elif s < 0.0 or s > length:
        return False
    rx = qx - s * ux
    ry = qy - s * uy
    rz = qz - s * uz
    return rx * rx + ry * ry + rz * rz <= radius * radius


@njit(cache=True)
def rods_occupancy(out, origin, dirm, spacing, starts, units, lengths, radii, capsule, nsub_xy, nsub_z):
    """Add (clipped at 1) the partial-volume occupancy of rods into ``out`` (k, j, i) on the scan grid.

    Rods are given in the scan's own LPS frame: ``starts`` (N, 3) mm, unit ``units`` (N, 3), ``lengths`` and
    ``radii`` (N,) mm; ``capsule`` adds hemispherical ends around the segment (then the segment runs between
    the two end-sphere centres). Voxels cut by a surface are supersampled ``nsub_xy`` x ``nsub_xy`` x
    ``nsub_z`` (a box slice profile: the whole slice thickness is averaged).
    """
    nk, nj, ni = out.shape
    half_diag = 0.5 * math.sqrt(spacing[0] ** 2 + spacing[1] ** 2 + spacing[2] ** 2)
    for n in range(starts.shape[0]):
        ax, ay, az = starts[n, 0], starts[n, 1], starts[n, 2]
        ux, uy, uz = units[n, 0], units[n, 1], units[n, 2]
        L = lengths[n]
        r = radii[n]
        bx, by, bz = ax + L * ux, ay + L * uy, az + L * uz
        # index box of the rod (+ radius + a voxel)
        lo = np.empty(3)
        hi = np.empty(3)
        for a in range(3):
            lo[a] = 1e18
            hi[a] = -1e18
        for e in range(2):
            px = ax if e == 0 else bx
            py = ay if e == 0 else by
            pz = az if e == 0 else bz
            for a in range(3):
                # ijk_a = (dir^T (p - origin))_a / spacing_a
                v = (dirm[0, a] * (px - origin[0]) + dirm[1, a] * (py - origin[1])
                     + dirm[2, a] * (pz - origin[2])) / spacing[a]
                pad = (r + 0.5) / spacing[a] + 1.0
                lo[a] = min(lo[a], v - pad)
                hi[a] = max(hi[a], v + pad)
        i0 = max(0, int(math.floor(lo[0])))
        i1 = min(ni - 1, int(math.ceil(hi[0])))
        j0 = max(0, int(math.floor(lo[1])))
        j1 = min(nj - 1, int(math.ceil(hi[1])))
        k0 = max(0, int(math.floor(lo[2])))
        k1 = min(nk - 1, int(math.ceil(hi[2])))
        for k in range(k0, k1 + 1):
            for j in range(j0, j1 + 1):
                for i in range(i0, i1 + 1):
                    cx = origin[0] + dirm[0, 0] * spacing[0] * i + dirm[0, 1] * spacing[1] * j + dirm[0, 2] * spacing[2] * k
                    cy = origin[1] + dirm[1, 0] * spacing[0] * i + dirm[1, 1] * spacing[1] * j + dirm[1, 2] * spacing[2] * k
                    cz = origin[2] + dirm[2, 0] * spacing[0] * i + dirm[2, 1] * spacing[1] * j + dirm[2, 2] * spacing[2] * k
                    # distance from the voxel centre to the segment: skip voxels that cannot touch the rod
                    qx, qy, qz = cx - ax, cy - ay, cz - az
                    s = qx * ux + qy * uy + qz * uz
                    sc = min(L, max(0.0, s))
                    dx, dy, dz = qx - sc * ux, qy - sc * uy, qz - sc * uz
                    dist = math.sqrt(dx * dx + dy * dy + dz * dz)
                    if dist > r + half_diag:
                        continue
                    cnt = 0
                    for sk in range(nsub_z):
                        fk = k + (sk + 0.5) / nsub_z - 0.5
                        for sj in range(nsub_xy):
                            fj = j + (sj + 0.5) / nsub_xy - 0.5
                            for si in range(nsub_xy):
                                fi = i + (si + 0.5) / nsub_xy - 0.5
                                px = origin[0] + dirm[0, 0] * spacing[0] * fi + dirm[0, 1] * spacing[1] * fj + dirm[0, 2] * spacing[2] * fk
                                py = origin[1] + dirm[1, 0] * spacing[0] * fi + dirm[1, 1] * spacing[1] * fj + dirm[1, 2] * spacing[2] * fk
                                pz = origin[2] + dirm[2, 0] * spacing[0] * fi + dirm[2, 1] * spacing[1] * fj + dirm[2, 2] * spacing[2] * fk
                                if _inside_rod(px, py, pz, ax, ay, az, ux, uy, uz, L, r, capsule):
                                    cnt += 1
                    if cnt > 0:
                        v = out[k, j, i] + cnt / (nsub_xy * nsub_xy * nsub_z)
                        out[k, j, i] = min(1.0, v)


# --- metal streaks: the error sinogram of the metal, filtered back-projected -------------------------------

@njit(cache=True)
def project_sparse(jj, ii, vals, cj, ci, sp, cos_t, sin_t, nt, t0):
    """Parallel-beam projections of a sparse in-plane image (pixel values ``vals`` at (jj, ii)).

    Returns (n_angles, nt) line integrals (value x mm); detector bin b is at t = t0 + b * sp (mm); pixels
    are splatted to the two nearest bins, so mass is conserved.
    """
    na = cos_t.shape[0]
    sino = np.zeros((na, nt))
    for p in range(vals.shape[0]):
        x = (ii[p] - ci) * sp
        y = (jj[p] - cj) * sp
        v = vals[p] * sp  # value x pixel area / bin width
        for a in range(na):
            t = (x * cos_t[a] + y * sin_t[a] - t0) / sp
            b = int(math.floor(t))
            f = t - b
            if 0 <= b < nt:
                sino[a, b] += v * (1.0 - f)
            if 0 <= b + 1 < nt:
                sino[a, b + 1] += v * f
    return sino


@njit(cache=True, parallel=True)
def backproject(q, nj, ni, cj, ci, sp, cos_t, sin_t, t0):
    """Back-projection of filtered projections ``q`` (n_angles, nt) onto an (nj, ni) image."""
    na, nt = q.shape
    img = np.zeros((nj, ni))
    scale = math.pi / na
    for j in prange(nj):
        y = (j - cj) * sp
        for i in range(ni):
            x = (i - ci) * sp
            acc = 0.0
            for a in range(na):
                t = (x * cos_t[a] + y * sin_t[a] - t0) / sp
                b = int(math.floor(t))
                f = t - b
                if 0 <= b and b + 1 < nt:
                    acc += q[a, b] * (1.0 - f) + q[a, b + 1] * f
            img[j, i] = acc * scale
    return img
