"""Tissue that is not tumour and that no data set here labels: fat, blood, mucus, debris
(necrosis), lymphoid tissue and smooth muscle, rendered by the Beer–Lambert law of the stains.

Issue 16 asks that a tile of glass, fat, blood, mucus or debris is not called tumour. The only
labelled tissue here is LC25000 (tumour and benign glands) and the normal skin of CMU-1, so a
classifier trained on them has never seen those tissues, and on a colorectal cohort they are a
large share of the slides. What makes each of them what it is is simple enough to draw at the
classifier's 1 µm/px, with the physics of :mod:`napari_nucleiseg.demo.render` (absorbance of
haematoxylin and eosin per pixel, the microscope's blur):

- **fat**: polygonal empty cells 35–90 µm across (a Voronoi tessellation) whose thin pink
  membranes carry a few flat nuclei; some membranes torn;
- **blood**: packed red cells (discs 6.5–8 µm with a pale centre, orange-red: haemoglobin absorbs
  blue as well as green) with a few white cells;
- **mucus**: pale grey-blue wisps (a little haematoxylin), streaming, with a few floating cells;
- **debris**: necrosis — granular pink with nuclear dust (1–2.5 µm fragments) and shrunken dark
  nuclei, ghost outlines of cells;
- **lymphoid**: sheets of small round dark nuclei (radius 2.5–3.5 µm) with hardly any cytoplasm;
- **muscle**: eosinophilic fascicles with long cigar-shaped nuclei, all running one way.

What they are for: measuring whether a classifier calls such tissue tumour
(``benchmarks/non_tumour.py``), and teaching it (``--synthetic N`` of
``scripts/train_tissue_default.py``). Taught as :data:`OTHER_TAG` with LC25000 as the only
tumour, they did not carry to real tissue: no unseen render was called tumour, but 88 % of a
real squamous carcinoma (the TCGA slide) was called ``other`` — the network learnt "looks drawn
or foreign", since every tumour it knew came from one lab. Taught as ``normal`` beside carcinoma
from many labs (the MoNuSeg training crops), they no longer teach that shortcut:
``tissue-tumour-v3`` calls no unseen debris or muscle render tumour, ranks other labs' carcinoma
above the renders (AUC 0.98) and calls most of the TCGA carcinoma tumour. How it does on real
debris or mucus is not measurable here. These are drawings, not tissue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..demo.render import E_VEC, H_VEC, _noise

#: The tag the renders are taught as.
OTHER_TAG = "other"
#: The kinds :func:`render_tissue` draws.
KINDS = ("fat", "blood", "mucus", "debris", "lymphoid", "muscle")
#: Optical-density direction of red cells: eosin plus haemoglobin's blue absorbance (orange-red).
RBC_VEC = np.array([0.10, 0.72, 0.69]) / np.linalg.norm([0.10, 0.72, 0.69])


def render_tissue(kind: str, size: int, mpp: float, seed: int = 0) -> np.ndarray:
    """An RGB uint8 ``(size, size, 3)`` image of ``kind`` (one of :data:`KINDS`) at ``mpp``."""
    if kind not in KINDS:
        raise ValueError(f"unknown tissue kind {kind!r}; one of {', '.join(KINDS)}")
    rng = np.random.default_rng([KINDS.index(kind), seed])
    shape = (size, size)
    od_h, od_e, od_r = globals()[f"_{kind}"](rng, shape, mpp)
    # Optical blur (about 0.4 µm), then the stains' absorbance, as the demo renderer.
    sigma = max(0.4 / mpp, 0.5)
    od = np.zeros((*shape, 3), np.float32)
    for amount, vec in ((od_h, H_VEC), (od_e, E_VEC), (od_r, RBC_VEC)):
        if amount is not None:
            od += ndi.gaussian_filter(np.clip(amount, 0, None), sigma)[..., None] * vec.astype(
                np.float32
            )
    white = rng.uniform(235, 252)
    rgb = white * np.power(10.0, -od) + rng.normal(0, 1.5, od.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _um(rng, lo, hi, mpp):
    return rng.uniform(lo, hi) / mpp


def _disc_field(shape, centres, radii):
    """Label image of discs (later ones on top) and each pixel's distance to its disc's centre
    over the radius (for pale centres and rims)."""
    labels = np.zeros(shape, np.int32)
    rel = np.ones(shape, np.float32)
    h, w = shape
    for k, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True), start=1):
        r0 = int(np.ceil(r)) + 1
        y0, y1 = max(0, int(cy) - r0), min(h, int(cy) + r0 + 1)
        x0, x1 = max(0, int(cx) - r0), min(w, int(cx) + r0 + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(yy - cy, xx - cx) / r
        inside = d <= 1
        labels[y0:y1, x0:x1][inside] = k
        rel[y0:y1, x0:x1][inside] = d[inside]
    return labels, rel


def _ellipses(shape, rng, n, a_px, b_px, theta=None, theta_sd=np.pi):
    """Mask of ``n`` ellipses with semi-axes drawn from the ``(lo, hi)`` pixel ranges."""
    h, w = shape
    mask = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(*a_px), rng.uniform(*b_px)
        t = rng.uniform(0, np.pi) if theta is None else theta + rng.normal(0, theta_sd)
        r0 = int(np.ceil(max(a, b))) + 1
        y0, y1 = max(0, int(cy) - r0), min(h, int(cy) + r0 + 1)
        x0, x1 = max(0, int(cx) - r0), min(w, int(cx) + r0 + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        c, s = np.cos(t), np.sin(t)
        mask[y0:y1, x0:x1] |= ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1
    return mask


def _fat(rng, shape, mpp):
    h, w = shape
    spacing = _um(rng, 35, 90, mpp)
    n = max(4, int(h * w / spacing**2 * 1.3))
    pts = rng.uniform([-spacing, -spacing], [h + spacing, w + spacing], (n, 2))
    # Membranes where the nearest and second-nearest cell centres are about equally far.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.stack([np.hypot(yy - y, xx - x) for y, x in pts])
    d.partition(1, axis=0)
    gap = d[1] - d[0]
    width = _um(rng, 1.0, 2.5, mpp)
    membrane = np.clip(1 - gap / width, 0, 1)
    membrane *= _noise(rng, shape, 6 / mpp) > rng.uniform(-2.0, -0.8)  # torn here and there
    od_e = membrane * rng.uniform(0.25, 0.55) * (1 + 0.2 * _noise(rng, shape, 1.5))
    od_h = np.zeros(shape, np.float32)
    flat = _ellipses(shape, rng, rng.integers(0, 4), (3 / mpp, 6 / mpp), (0.8 / mpp, 1.5 / mpp))
    od_h[flat & (membrane > 0.2)] = rng.uniform(0.4, 0.7)
    return od_h, od_e, None


def _blood(rng, shape, mpp):
    h, w = shape
    density = rng.uniform(0.5, 1.0)
    r_mean = _um(rng, 3.2, 4.0, mpp)
    n = int(h * w / (np.pi * r_mean**2) * density * 1.4)
    centres = rng.uniform(0, [h, w], (n, 2))
    radii = r_mean * rng.uniform(0.85, 1.1, n)
    labels, rel = _disc_field(shape, centres, radii)
    rbc = labels > 0
    # Biconcave: paler at the centre, darker at the rim; edges where cells overlap.
    amount = np.where(rbc, 0.35 + 0.3 * rel**2, 0.0) * rng.uniform(0.6, 1.2)
    edges = rbc & (ndi.maximum_filter(labels, 3) != ndi.minimum_filter(labels, 3))
    amount[edges] *= 1.25
    plasma = 0.06 * (1 + 0.3 * _noise(rng, shape, 4 / mpp))
    od_r = np.where(rbc, amount, 0.0).astype(np.float32)
    od_e = np.where(rbc, 0.0, plasma).astype(np.float32)
    od_h = np.zeros(shape, np.float32)
    white = _ellipses(shape, rng, rng.integers(0, 4), (3 / mpp, 4.5 / mpp), (2.5 / mpp, 4 / mpp))
    od_h[white] = rng.uniform(0.5, 0.8)
    od_r[white] = 0
    return od_h, od_e, od_r


def _streaks(rng, shape, mpp, along, scale_um):
    """Noise stretched along a direction: wisps of mucus, fibres of muscle."""
    s_long, s_short = scale_um[0] / mpp, scale_um[1] / mpp
    n = rng.standard_normal(shape).astype(np.float32)
    n = ndi.gaussian_filter(n, (s_short, s_long))
    n = ndi.rotate(n, np.degrees(along), reshape=False, mode="reflect")
    return n / max(float(n.std()), 1e-6)


def _mucus(rng, shape, mpp):
    along = rng.uniform(0, np.pi)
    wisps = _streaks(rng, shape, mpp, along, (rng.uniform(12, 30), rng.uniform(1.5, 4)))
    swirl = _noise(rng, shape, 15 / mpp)
    level = np.clip(0.6 * wisps + 0.5 * swirl + rng.uniform(-0.3, 0.5), 0, None)
    od_h = (rng.uniform(0.05, 0.16) * level).astype(np.float32)
    od_e = (rng.uniform(0.01, 0.06) * level).astype(np.float32)
    cells = _ellipses(shape, rng, rng.integers(0, 5), (2.5 / mpp, 4 / mpp), (2 / mpp, 3.5 / mpp))
    od_h[cells] = rng.uniform(0.4, 0.7)
    return od_h, od_e, None


def _debris(rng, shape, mpp):
    h, w = shape
    base = rng.uniform(0.15, 0.45)
    granular = 1 + 0.35 * _noise(rng, shape, 1.0) + 0.3 * _noise(rng, shape, 8 / mpp)
    od_e = (base * np.clip(granular, 0.1, None)).astype(np.float32)
    od_h = (rng.uniform(0.02, 0.1) * np.clip(1 + _noise(rng, shape, 10 / mpp), 0, None)).astype(
        np.float32
    )
    # Nuclear dust: many small dark fragments; some shrunken round dark nuclei.
    area_px = h * w
    dust = _ellipses(
        shape, rng, int(area_px * mpp**2 / rng.uniform(60, 250)), (0.5 / mpp, 1.3 / mpp),
        (0.4 / mpp, 1.0 / mpp),
    )  # fmt: skip
    pyknotic = _ellipses(
        shape, rng, int(area_px * mpp**2 / rng.uniform(400, 1500)), (1.5 / mpp, 3 / mpp),
        (1.3 / mpp, 2.8 / mpp),
    )  # fmt: skip
    od_h[dust] = rng.uniform(0.45, 0.9)
    od_h[pyknotic] = rng.uniform(0.7, 1.0)
    # Ghosts of cells: faint outlines of round shapes, and a few holes.
    ghosts = _ellipses(
        shape, rng, int(area_px * mpp**2 / 300), (4 / mpp, 7 / mpp), (4 / mpp, 7 / mpp)
    )
    rim = ghosts & ~ndi.binary_erosion(ghosts, iterations=max(1, round(0.8 / mpp)))
    od_e[rim] *= 1.4
    holes = _noise(rng, shape, 6 / mpp) > rng.uniform(1.2, 2.2)
    od_e[holes] *= 0.15
    return od_h, od_e, None


def _lymphoid(rng, shape, mpp):
    h, w = shape
    r_mean = _um(rng, 2.5, 3.4, mpp)
    density = rng.uniform(0.45, 0.8)
    n = int(h * w / (np.pi * (r_mean * 1.3) ** 2) * density * 1.6)
    centres = rng.uniform(0, [h, w], (n, 2))
    labels, rel = _disc_field(shape, centres, r_mean * rng.uniform(0.85, 1.15, n))
    nuc = labels > 0
    chroma = _noise(rng, shape, 0.8)
    od_h = np.where(nuc, rng.uniform(0.7, 1.1) + 0.12 * chroma, 0.05).astype(np.float32)
    od_e = np.where(nuc, 0.05, rng.uniform(0.08, 0.2) * (1 + 0.3 * _noise(rng, shape, 3))).astype(
        np.float32
    )
    return od_h, od_e, None


def _muscle(rng, shape, mpp):
    along = rng.uniform(0, np.pi)
    fibres = _streaks(rng, shape, mpp, along, (rng.uniform(15, 40), rng.uniform(1.5, 3)))
    bands = _streaks(rng, shape, mpp, along, (60, 12))
    od_e = (rng.uniform(0.3, 0.55) * np.clip(1 + 0.18 * fibres + 0.12 * bands, 0.2, None)).astype(
        np.float32
    )
    clefts = fibres < rng.uniform(-2.2, -1.5)
    od_e[clefts] *= 0.3
    h, w = shape
    n = int(h * w * mpp**2 / rng.uniform(250, 600))
    # Image rows are y, so an angle "along" the fibres is measured from the x axis upwards.
    nuclei = _ellipses(
        shape, rng, n, (5 / mpp, 9 / mpp), (1.0 / mpp, 1.6 / mpp), theta=-along, theta_sd=0.08
    )
    od_h = np.where(nuclei, rng.uniform(0.45, 0.75), 0.03).astype(np.float32)
    od_e[nuclei] *= 0.5
    return od_h, od_e, None
