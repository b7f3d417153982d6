"""Numba CPU kernels of the tile rasterizer for projected 2D Gaussians.

Everything here works on float64 numpy arrays in *output pixel* coordinates (pixel (i, j) has its
centre at (j + 0.5, i + 0.5)) and is called only through :mod:`air_core.raster2d.cpu`.

Per Gaussian g the kernels take its mean (mx, my), its conic (a, b, c) = Sigma^-1 entries, its
colour (C channels) and its opacity o. With d = p - mu and q = d^T Sigma^-1 d:

    raw weight  v = o * exp(-q / 2)
    "sum"   mode: w = min(1, v),    I(p)  = sum_g c_g w_g(p)          (GaussianImage / AIR)
    "alpha" mode: alpha = min(0.99, v), front-to-back blending in list order, early stop when the
                  transmittance would fall to <= 1e-4 (3DGS / gsplat), background added with T.

A term is skipped when v < 1/255, i.e. when q > Q_g = 2 ln(255 o_g). Each Gaussian is visited only
on the pixels of its ellipse q <= Q_g: tiles give the parallel work units and every image row of a
tile is clipped to the exact span where the ellipse is crossed (the solution of a quadratic; the
pixel centres within SPAN_EPS of it), then tested per pixel, so the work is the number of
contributing Gaussian-pixel pairs. Along a row the weight follows a multiplicative recurrence (see
``_row_start``), and from row to row the row-start state follows one too (see ``_walk_start``), so
a Gaussian costs a few exp() in all rather than one per pixel. There is no cap on the number of Gaussians
per tile. Each tile accumulates in small pixel-major buffers and writes the outputs once.

Image-space derivatives (Niedermayr et al. 2025, "Lightweight Gradient-Aware Upscaling of 3D
Gaussian Splatting Images"): g = -q/2, g_x = -(a dx + b dy), g_y = -(b dx + c dy), g_xy = -b,
w_x = w g_x, w_y = w g_y, w_xy = w (g_x g_y + g_xy), zero where the weight is clamped. Alpha mode
uses the front-to-back recurrences on the accumulated alpha A = 1 - T and its derivatives.

The entry points release the GIL (``nogil``), so a render can run in a background thread while
the calling program goes on (the Blender add-on's viewport preview does).

Backward passes accumulate per-Gaussian gradients in a fixed number of chunk-private buffers that
are summed in a fixed order, so the result does not depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

LOG255_2 = 2.0 * math.log(255.0)
MIN_WEIGHT = 1.0 / 255.0
ALPHA_CAP = 0.99
T_STOP = 1e-4
N_GRAD_CHUNKS = 16  # fixed -> deterministic reduction whatever the thread count
N_FWD_CHUNKS = 64
# Pixel centres are kept when they lie within SPAN_EPS pixels of a bounding box or row span (an
# analytic bound, exact up to rounding); the per-pixel test v >= 1/255 then decides.
SPAN_EPS = 1e-3


@njit(inline="always")
def _extent(a, b, c, o):
    """Cut-off Q = 2 ln(255 o) and bounding half-extents (rx, ry) of one Gaussian (Q = -1, rx = ry = 0
    when it never reaches 1/255 or its conic is not positive definite)."""
    q = math.log(255.0 * o) * 2.0 if o > 0.0 else -1.0
    det = a * c - b * b
    if q <= 0.0 or det <= 0.0 or a <= 0.0:
        return -1.0, 0.0, 0.0
    return q, math.sqrt(q * c / det), math.sqrt(q * a / det)


@njit(parallel=True, cache=True, nogil=True)
def prepare(conics, opacities):
    """Everything per Gaussian that a render needs before binning, in one parallel pass: the cut-off
    Q = 2 ln(255 o) [N] (negative when the Gaussian never reaches 1/255), the bounding half-extents
    rx, ry [N] in pixels (see ``_extent``) and the traversal constants [N, 6]: 1 / a,
    det = a c - b^2, a Q, and the recurrence factors exp(-a), exp(-b), exp(-c) (-1 where a
    recurrence is not used: exp(-a) needs a <= RECURRENCE_MAX_A, the row-to-row walker needs both a
    and c <= RECURRENCE_MAX_A; see ``_walk_start``)."""
    n = conics.shape[0]
    qmax = np.empty(n)
    rx = np.empty(n)
    ry = np.empty(n)
    consts = np.empty((n, 6))
    for g in prange(n):
        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
        q, qmax_rx, qmax_ry = _extent(a, b, c, opacities[g])
        qmax[g] = q
        rx[g] = qmax_rx
        ry[g] = qmax_ry
        consts[g, 0] = 1.0 / a if a > 0.0 else 0.0
        consts[g, 1] = a * c - b * b
        consts[g, 2] = a * q
        consts[g, 3] = math.exp(-a) if a <= RECURRENCE_MAX_A else -1.0
        walk = a <= RECURRENCE_MAX_A and c <= RECURRENCE_MAX_A
        consts[g, 4] = math.exp(-b) if walk else -1.0
        consts[g, 5] = math.exp(-c) if walk else -1.0
    return qmax, rx, ry, consts


@njit(parallel=True, cache=True, nogil=True)
def _tile_rects(means, qmax, rx, ry, height, width, tile_h, tile_w):
    """Per Gaussian the tile rectangle its bounding box touches, [N, 4] = (tx0, tx1, ty0, ty1) (an
    empty range when it touches no pixel)."""
    n = means.shape[0]
    rect = np.empty((n, 4), dtype=np.int64)
    for g in prange(n):
        rect[g, 0] = 1  # empty range unless the Gaussian touches the image
        rect[g, 1] = 0
        rect[g, 2] = 1
        rect[g, 3] = 0
        if qmax[g] <= 0.0 or not (math.isfinite(means[g, 0]) and math.isfinite(means[g, 1])):
            continue
        # pixel j is a candidate when |j + 0.5 - mx| <= rx (+ SPAN_EPS)
        j0 = max(0, int(math.ceil(means[g, 0] - rx[g] - 0.5 - SPAN_EPS)))
        j1 = min(width - 1, int(math.floor(means[g, 0] + rx[g] - 0.5 + SPAN_EPS)))
        i0 = max(0, int(math.ceil(means[g, 1] - ry[g] - 0.5 - SPAN_EPS)))
        i1 = min(height - 1, int(math.floor(means[g, 1] + ry[g] - 0.5 + SPAN_EPS)))
        if j0 > j1 or i0 > i1:
            continue
        rect[g, 0] = j0 // tile_w
        rect[g, 1] = j1 // tile_w
        rect[g, 2] = i0 // tile_h
        rect[g, 3] = i1 // tile_h
    return rect


@njit(cache=True, nogil=True)
def bin_tiles(means, qmax, rx, ry, height, width, tile_h, tile_w):
    """Tile binning: for each tile, the ids of the Gaussians whose bounding box touches it, in
    list order. No cap per tile.

    Returns (offsets [T + 1] int64, ids [M] int64, tiles_x, tiles_y); tile t = ty * tiles_x + tx owns
    ids[offsets[t]:offsets[t + 1]].
    """
    n = means.shape[0]
    tiles_x = (width + tile_w - 1) // tile_w
    tiles_y = (height + tile_h - 1) // tile_h
    nt = tiles_x * tiles_y
    rect = _tile_rects(means, qmax, rx, ry, height, width, tile_h, tile_w)
    counts = np.zeros(nt + 1, dtype=np.int64)
    for g in range(n):
        for ty in range(rect[g, 2], rect[g, 3] + 1):
            for tx in range(rect[g, 0], rect[g, 1] + 1):
                counts[ty * tiles_x + tx + 1] += 1
    for t in range(nt):
        counts[t + 1] += counts[t]
    ids = np.empty(counts[nt], dtype=np.int64)
    fill = counts[:nt].copy()
    for g in range(n):
        for ty in range(rect[g, 2], rect[g, 3] + 1):
            for tx in range(rect[g, 0], rect[g, 1] + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return counts, ids, tiles_x, tiles_y


@njit(inline="always")
def _row_span(mx, my, b, inv_a, det, aq, i, x0, x1):
    """Columns [j0, j1] of row i (clipped to [x0, x1)) that may lie inside q(d) <= Q; j0 > j1 if none.

    The ellipse a dx^2 + 2 b dx dy + c dy^2 = Q crosses the row at dx = (-b dy -+ sqrt(aQ - det dy^2)) / a.
    """
    dy = i + 0.5 - my
    disc = aq - det * dy * dy
    if disc < 0.0:
        return 1, 0
    s = math.sqrt(disc)
    bdy = -b * dy
    j0 = max(x0, int(math.ceil(mx + (bdy - s) * inv_a - 0.5 - SPAN_EPS)))
    j1 = min(x1 - 1, int(math.floor(mx + (bdy + s) * inv_a - 0.5 + SPAN_EPS)))
    return j0, j1


# Along an image row the Gaussian exp(-q/2) is exp of a quadratic in x, so consecutive pixels
# differ by a factor r that itself changes by the constant factor m = exp(-a):
#     e(dx + 1) = e(dx) r(dx),  r(dx) = exp(-a dx - a/2 - b dy),  r(dx + 1) = r(dx) m.
# Three exp() per row replace one per pixel. The recurrence is used when a <= RECURRENCE_MAX_A
# (then |a dx| stays below ~10 over the span, far from overflow, and the rounding drift over a
# row is ~1e-15 relative); narrower Gaussians (short rows) evaluate exp() at every pixel.
RECURRENCE_MAX_A = 4.0


@njit(inline="always")
def _row_start(a, b, c, mx, dy, j0, m):
    """Weight and step factor at the first pixel j0 of a row; m = exp(-a), or -1 without recurrence."""
    dx = j0 + 0.5 - mx
    e = math.exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + c * dy * dy))
    if m >= 0.0:
        return e, math.exp(-a * dx - 0.5 * a - b * dy)
    return e, 0.0


@njit(inline="always")
def _row_step(e, r, m, a, b, c, dx, dy):
    """Weight exp(-q/2) at offset dx given the previous pixel's state (see above)."""
    if m >= 0.0:
        return e * r, r * m
    return math.exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + c * dy * dy)), r


# From one row to the next the row-start state follows recurrences too (Gaussians with a and c
# <= RECURRENCE_MAX_A): with E = e(dx, dy), R = e(dx + 1, dy) / E and V = e(dx, dy + 1) / E,
#     down:  E <- E V,  R <- R exp(-b),  V <- V exp(-c)
#     right: E <- E R,  R <- R exp(-a),  V <- V exp(-b)      (left: the inverse steps)
# so a row costs a few multiplications instead of two exp(). The state is restarted with three
# exp() when the new row starts more than WALK_MAX_SHIFT columns away or the weight is tiny (far
# outside the ellipse after skipped rows), which bounds the rounding drift (~1e-15 relative).
WALK_MAX_SHIFT = 8


@njit(inline="always")
def _walk_start(a, b, c, mx, dy, j0):
    """Walker state (E, R, V) at column j0 of the row at offset dy."""
    dx = j0 + 0.5 - mx
    return (math.exp(-0.5 * (a * dx * dx + 2.0 * b * dx * dy + c * dy * dy)), math.exp(-a * dx - 0.5 * a - b * dy),
            math.exp(-(b * dx + c * dy) - 0.5 * c))


@njit(inline="always")
def _row_begin(live, st_e, st_r, st_v, jp, j0, dy, a, b, c, mx, ma, mb):
    """Weight and row step factor at the first pixel j0 of a row, and the updated walker state
    (see above). ``live`` says whether (st_e, st_r, st_v) holds the state at column jp of this row."""
    if mb < 0.0:
        e, r = _row_start(a, b, c, mx, dy, j0, ma)
        return e, r, False, st_e, st_r, st_v, jp
    if live and abs(j0 - jp) <= WALK_MAX_SHIFT and st_e > 1e-250:
        while jp < j0:
            st_e *= st_r
            st_v *= mb
            st_r *= ma
            jp += 1
        while jp > j0:
            st_r /= ma
            st_e /= st_r
            st_v /= mb
            jp -= 1
    else:
        st_e, st_r, st_v = _walk_start(a, b, c, mx, dy, j0)
        jp = j0
    return st_e, st_r, True, st_e, st_r, st_v, jp


@njit(inline="always")
def _tile_rect(t, tiles_x, tile_h, tile_w, height, width):
    """Pixel rectangle [x0, x1) x [y0, y1) of tile t (row-major tile order)."""
    x0 = (t % tiles_x) * tile_w
    y0 = (t // tiles_x) * tile_h
    return x0, y0, min(width, x0 + tile_w), min(height, y0 + tile_h)


@njit(inline="always")
def _load_gaussian(g, means, conics, opacities, qmax, ry, consts, y0, y1):
    """Gaussian g's mean, conic, cut-off, opacity, its rows [i0, i1] inside [y0, y1) and its
    traversal constants (see ``prepare``)."""
    my = means[g, 1]
    i0 = max(y0, int(math.ceil(my - ry[g] - 0.5 - SPAN_EPS)))
    i1 = min(y1 - 1, int(math.floor(my + ry[g] - 0.5 + SPAN_EPS)))
    return (means[g, 0], my, conics[g, 0], conics[g, 1], conics[g, 2], qmax[g], opacities[g], i0, i1,
            consts[g, 0], consts[g, 1], consts[g, 2], consts[g, 3], consts[g, 4], consts[g, 5])


def forward(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
            height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    """Render into the outputs ``image`` [C, H, W] and ``derivs`` [3, D, H, W] (I_x, I_y, I_xy of the
    first D <= C channels; any zero-size array when not wanted), whose dtype (float32 or float64) the
    caller chooses; the blending arithmetic runs in float64. Every pixel of both is written (they
    need no initialisation). Releases the GIL while it runs.

    The common channel counts have their own compiled kernel with the counts as constants (the
    per-channel loops unrolled, the colours held in registers; 10-20 % faster): C = 4 (3DGS: RGB and
    depth) with D = 3 or no derivatives, C = 3 (RGB images) with D = 3 or none; other counts use the
    general kernel. Each is compiled on its first use only (numba caches it on disk).

    Returns transmittance T [H, W] (1 in sum mode) and last [H, W] (index into ``ids`` of the last
    Gaussian blended per pixel, -1 if none; alpha mode), both needed by the backward pass.
    """
    key = (colours.shape[1], derivs.shape[1] if want_derivs else 0)
    kernel = _FORWARD_KERNELS.get(key, _forward_any)
    return kernel(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                  height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs)


# One tile function and one parallel entry per channel configuration (C, D): numba compiles a
# function together with every function it calls, so the configurations live in separate entry
# points that ``forward`` picks, and a program compiles only those it uses. The parallel loop only
# dispatches tiles: a static schedule over chunks, chunk c taking tiles c, c + n, c + 2n, ... so that
# each thread gets tiles from all over the image (tiles differ a lot in cost).

@njit(cache=True, nogil=True)
def _tile_any(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
              tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, nch, nder):
    _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
               tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, nch, nder)


@njit(parallel=True, cache=True, nogil=True)
def _forward_any(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                 height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    nch = colours.shape[1]
    nder = derivs.shape[1] if want_derivs else 0
    trans = np.ones((height, width))
    last = np.full((height, width), -1, dtype=np.int64)
    for chunk in prange(N_FWD_CHUNKS):
        for t in range(chunk, tiles_x * tiles_y, N_FWD_CHUNKS):
            _tile_any(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                      tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, nch, nder)
    return trans, last


@njit(cache=True, nogil=True)
def _tile_c4_d3(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs):
    _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
               tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, 4, 3)


@njit(parallel=True, cache=True, nogil=True)
def _forward_c4_d3(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                   height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    trans = np.ones((height, width))
    last = np.full((height, width), -1, dtype=np.int64)
    for chunk in prange(N_FWD_CHUNKS):
        for t in range(chunk, tiles_x * tiles_y, N_FWD_CHUNKS):
            _tile_c4_d3(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                        tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs)
    return trans, last


@njit(cache=True, nogil=True)
def _tile_c4_d0(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs):
    _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
               tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, 4, 0)


@njit(parallel=True, cache=True, nogil=True)
def _forward_c4_d0(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                   height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    trans = np.ones((height, width))
    last = np.full((height, width), -1, dtype=np.int64)
    for chunk in prange(N_FWD_CHUNKS):
        for t in range(chunk, tiles_x * tiles_y, N_FWD_CHUNKS):
            _tile_c4_d0(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                        tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs)
    return trans, last


@njit(cache=True, nogil=True)
def _tile_c3_d3(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs):
    _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
               tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, 3, 3)


@njit(parallel=True, cache=True, nogil=True)
def _forward_c3_d3(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                   height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    trans = np.ones((height, width))
    last = np.full((height, width), -1, dtype=np.int64)
    for chunk in prange(N_FWD_CHUNKS):
        for t in range(chunk, tiles_x * tiles_y, N_FWD_CHUNKS):
            _tile_c3_d3(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                        tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs)
    return trans, last


@njit(cache=True, nogil=True)
def _tile_c3_d0(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs):
    _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
               tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, 3, 0)


@njit(parallel=True, cache=True, nogil=True)
def _forward_c3_d0(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
                   height, width, tile_h, tile_w, alpha_mode, want_derivs, image, derivs):
    trans = np.ones((height, width))
    last = np.full((height, width), -1, dtype=np.int64)
    for chunk in prange(N_FWD_CHUNKS):
        for t in range(chunk, tiles_x * tiles_y, N_FWD_CHUNKS):
            _tile_c3_d0(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids,
                        tiles_x, height, width, tile_h, tile_w, alpha_mode, image, trans, last, derivs)
    return trans, last


_FORWARD_KERNELS = {(4, 3): _forward_c4_d3, (4, 0): _forward_c4_d0, (3, 3): _forward_c3_d3,
                    (3, 0): _forward_c3_d0}


@njit(inline="always")
def _tile_body(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, height,
               width, tile_h, tile_w, alpha_mode, image, trans, last, derivs, nch, nder):
    """Render tile t into the output arrays, with C = ``nch`` channels and derivatives of the first
    ``nder`` (0: none). The tile accumulates in float64 buffers laid out pixel-major (all values of
    one pixel side by side, so a blended pixel touches one or two cache lines) and writes the
    outputs once at the end."""
    want_derivs = nder > 0
    cap = ALPHA_CAP if alpha_mode else 1.0
    x0, y0, x1, y1 = _tile_rect(t, tiles_x, tile_h, tile_w, height, width)
    npix = (x1 - x0) * (y1 - y0)
    ndone = 0
    img = np.zeros((tile_h, tile_w, nch))
    tr = np.ones((tile_h, tile_w))
    lst = np.full((tile_h, tile_w), -1, dtype=np.int64)
    # derivative state per pixel: I_x, I_y, I_xy of each channel, then (alpha mode) A_x, A_y, A_xy of
    # the accumulated alpha A = 1 - T
    der = np.zeros((tile_h, tile_w, 3 * nder + 3))
    done = np.zeros((tile_h, tile_w), dtype=np.bool_)
    # alpha mode: the columns [row_lo, row_hi] of each tile row that still hold unfinished pixels
    # (finished pixels at either end are trimmed off; a row with none left has row_lo > row_hi)
    row_lo = np.full(tile_h, x0, dtype=np.int64)
    row_hi = np.full(tile_h, x1 - 1, dtype=np.int64)
    for k in range(offsets[t], offsets[t + 1]):
        g = ids[k]
        mx, my, a, b, c, q, o, i0, i1, inv_a, det, aq, m, mb, mc = _load_gaussian(
            g, means, conics, opacities, qmax, ry, consts, y0, y1)
        live = False
        st_e = st_r = st_v = 0.0
        jp = 0
        for i in range(i0, i1 + 1):
            if live:  # walker state to this row
                st_e *= st_v
                st_r *= mb
                st_v *= mc
            li = i - y0
            if alpha_mode and row_lo[li] > row_hi[li]:
                continue
            j0, j1 = _row_span(mx, my, b, inv_a, det, aq, i, x0, x1)
            if alpha_mode:
                j0 = max(j0, row_lo[li])
                j1 = min(j1, row_hi[li])
            if j0 > j1:
                continue
            dy = i + 0.5 - my
            e, r, live, st_e, st_r, st_v, jp = _row_begin(live, st_e, st_r, st_v, jp, j0, dy, a, b, c, mx, m, mb)
            for j in range(j0, j1 + 1):
                dx = j + 0.5 - mx
                if j > j0:
                    e, r = _row_step(e, r, m, a, b, c, dx, dy)
                v = o * e
                if v < MIN_WEIGHT:
                    continue
                w = min(cap, v)
                lj = j - x0
                if not alpha_mode:
                    for ch in range(nch):
                        img[li, lj, ch] += w * colours[g, ch]
                    if want_derivs and v < cap:
                        gx = -(a * dx + b * dy)
                        gy = -(b * dx + c * dy)
                        wx = w * gx
                        wy = w * gy
                        wxy = w * (gx * gy - b)
                        for ch in range(nder):
                            col = colours[g, ch]
                            der[li, lj, 3 * ch] += wx * col
                            der[li, lj, 3 * ch + 1] += wy * col
                            der[li, lj, 3 * ch + 2] += wxy * col
                else:
                    if done[li, lj]:
                        continue
                    tcur = tr[li, lj]
                    tnext = tcur * (1.0 - w)
                    if tnext <= T_STOP:
                        done[li, lj] = True
                        ndone += 1
                        while row_lo[li] <= row_hi[li] and done[li, row_lo[li] - x0]:
                            row_lo[li] += 1
                        while row_hi[li] >= row_lo[li] and done[li, row_hi[li] - x0]:
                            row_hi[li] -= 1
                        continue
                    wt = w * tcur
                    for ch in range(nch):
                        img[li, lj, ch] += colours[g, ch] * wt
                    if want_derivs:
                        if v < cap:
                            gx = -(a * dx + b * dy)
                            gy = -(b * dx + c * dy)
                            wx = w * gx
                            wy = w * gy
                            wxy = w * (gx * gy - b)
                        else:
                            wx = 0.0
                            wy = 0.0
                            wxy = 0.0
                        pax = der[li, lj, 3 * nder]
                        pay = der[li, lj, 3 * nder + 1]
                        paxy = der[li, lj, 3 * nder + 2]
                        # d(T alpha)/dx, /dy, d2/dxdy with T = 1 - A (front-to-back recurrences)
                        dwx = tcur * wx - pax * w
                        dwy = tcur * wy - pay * w
                        dwxy = tcur * wxy - paxy * w - pax * wy - pay * wx
                        for ch in range(nder):
                            col = colours[g, ch]
                            der[li, lj, 3 * ch] += col * dwx
                            der[li, lj, 3 * ch + 1] += col * dwy
                            der[li, lj, 3 * ch + 2] += col * dwxy
                        der[li, lj, 3 * nder] = pax + dwx
                        der[li, lj, 3 * nder + 1] = pay + dwy
                        der[li, lj, 3 * nder + 2] = paxy + dwxy
                    tr[li, lj] = tnext
                    lst[li, lj] = k
        if alpha_mode and ndone == npix:
            break
    # write out (alpha mode: background seen through the final T, I_x -= A_x bg, ...)
    for i in range(y0, y1):
        li = i - y0
        for j in range(x0, x1):
            lj = j - x0
            tt = tr[li, lj]
            trans[i, j] = tt
            last[i, j] = lst[li, lj]
            for ch in range(nch):
                image[ch, i, j] = img[li, lj, ch] + (tt * background[ch] if alpha_mode else 0.0)
            for ch in range(nder):
                for d in range(3):
                    value = der[li, lj, 3 * ch + d]
                    if alpha_mode:
                        value -= der[li, lj, 3 * nder + d] * background[ch]
                    derivs[d, ch, i, j] = value


@njit(parallel=True, cache=True, nogil=True)
def backward(means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x, tiles_y,
             height, width, tile_h, tile_w, alpha_mode, trans_final, last, grad_image):
    """Gradients of a scalar loss given dL/dimage [H, W, C].

    Returns per-Gaussian gradients [N, 6 + C]: (mean x, mean y, conic a, b, c, opacity, colours...).
    The background gradient is computed by the caller (sum over pixels of T * dL/dI).
    """
    n = means.shape[0]
    nch = colours.shape[1]
    grads = np.zeros((N_GRAD_CHUNKS, n, 6 + nch))
    nt = tiles_x * tiles_y
    for chunk in prange(N_GRAD_CHUNKS):
        for t in range(chunk, nt, N_GRAD_CHUNKS):
            _backward_tile(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x,
                           height, width, tile_h, tile_w, alpha_mode, trans_final, last, grad_image, grads[chunk])
    out = np.zeros((n, 6 + nch))
    for chunk in range(N_GRAD_CHUNKS):
        out += grads[chunk]
    return out


@njit(cache=True)
def _backward_tile(t, means, conics, colours, opacities, background, qmax, ry, consts, offsets, ids, tiles_x,
                   height, width, tile_h, tile_w, alpha_mode, trans_final, last, grad_image, gr):
    """Accumulate the gradients of tile t into gr [N, 6 + C]."""
    nch = colours.shape[1]
    cap = ALPHA_CAP if alpha_mode else 1.0
    x0, y0, x1, y1 = _tile_rect(t, tiles_x, tile_h, tile_w, height, width)
    if not alpha_mode:
        kstart = offsets[t]
        kend = offsets[t + 1]
        kstep = 1
    else:
        # back to front over the Gaussians blended in this tile
        kend = offsets[t] - 1
        kstart = -1
        for i in range(y0, y1):
            for j in range(x0, x1):
                kstart = max(kstart, last[i, j])
        if kstart < 0:
            return
        kstep = -1
    # alpha-mode running state: T before the current Gaussian, colour accumulated behind it
    tcur = np.empty((tile_h, tile_w))
    behind = np.zeros((tile_h, tile_w, nch))
    bg_dot = np.zeros((tile_h, tile_w))
    if alpha_mode:
        for i in range(y0, y1):
            for j in range(x0, x1):
                tcur[i - y0, j - x0] = trans_final[i, j]
                s = 0.0
                for ch in range(nch):
                    s += background[ch] * grad_image[ch, i, j]
                bg_dot[i - y0, j - x0] = s * trans_final[i, j]
    for k in range(kstart, kend, kstep):
        g = ids[k]
        mx, my, a, b, c, q, o, i0, i1, inv_a, det, aq, m, mb, mc = _load_gaussian(
            g, means, conics, opacities, qmax, ry, consts, y0, y1)
        live = False
        st_e = st_r = st_v = 0.0
        jp = 0
        for i in range(i0, i1 + 1):
            if live:
                st_e *= st_v
                st_r *= mb
                st_v *= mc
            j0, j1 = _row_span(mx, my, b, inv_a, det, aq, i, x0, x1)
            if j0 > j1:
                continue
            dy = i + 0.5 - my
            e, r, live, st_e, st_r, st_v, jp = _row_begin(live, st_e, st_r, st_v, jp, j0, dy, a, b, c, mx, m, mb)
            for j in range(j0, j1 + 1):
                dx = j + 0.5 - mx
                if j > j0:
                    e, r = _row_step(e, r, m, a, b, c, dx, dy)
                if alpha_mode and k > last[i, j]:
                    continue
                v = o * e
                if v < MIN_WEIGHT:
                    continue
                w = min(cap, v)
                if not alpha_mode:
                    vw = 0.0
                    for ch in range(nch):
                        go = grad_image[ch, i, j]
                        gr[g, 6 + ch] += w * go
                        vw += colours[g, ch] * go
                else:
                    li = i - y0
                    lj = j - x0
                    ra = 1.0 / (1.0 - w)
                    tt = tcur[li, lj] * ra
                    tcur[li, lj] = tt
                    fac = w * tt
                    vw = 0.0
                    for ch in range(nch):
                        go = grad_image[ch, i, j]
                        col = colours[g, ch]
                        gr[g, 6 + ch] += fac * go
                        vw += (col * tt - behind[li, lj, ch] * ra) * go
                        behind[li, lj, ch] += col * fac
                    vw -= bg_dot[li, lj] * ra
                if v < cap:
                    gr[g, 5] += vw * e
                    vq = -0.5 * vw * v
                    # q = a dx^2 + 2 b dx dy + c dy^2 with d = p - mean
                    gr[g, 2] += vq * dx * dx
                    gr[g, 3] += vq * 2.0 * dx * dy
                    gr[g, 4] += vq * dy * dy
                    # dq/dmx = -2 (a dx + b dy), dq/dmy = -2 (b dx + c dy)
                    gr[g, 0] += -2.0 * vq * (a * dx + b * dy)
                    gr[g, 1] += -2.0 * vq * (b * dx + c * dy)
