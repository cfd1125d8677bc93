"""Normalised views of whole slides: lazy, per chunk, on every pyramid level.

A slide is one source: its statistics are sampled once from tissue at full resolution (a few
level-0 blocks where the coarsest level shows tissue), the normaliser is adapted to them, and
every chunk of every level is then mapped by the same per-pixel function through
``dask.array.map_blocks``. Nothing is read or computed for the view until napari (or a writer)
asks for a chunk; the view at any zoom shows the same colours.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from .optical import MAX_FIT_PIXELS, as_pixels, tissue_selection

#: Level-0 blocks sampled for a slide's statistics, and their edge in pixels.
SAMPLE_BLOCKS = 16
SAMPLE_BLOCK_PX = 512
#: A level this small (pixels) is read whole instead of sampled block by block.
READ_WHOLE_PX = 2048 * 2048
#: Pixels of the coarse view that locates tissue.
MASK_PX = 512 * 512


def sample_levels(
    levels,
    max_pixels: int = MAX_FIT_PIXELS,
    blocks: int = SAMPLE_BLOCKS,
    block_px: int = SAMPLE_BLOCK_PX,
    seed: int = 0,
) -> np.ndarray:
    """Full-resolution pixels (N, 3) uint8 from the tissue of a multiscale RGB image.

    The coarsest level locates tissue; up to ``blocks`` level-0 blocks of ``block_px``² that are
    mostly tissue are read (chosen at random, seeded). Small images are read whole. The pixel
    count is capped at ``max_pixels`` later, by the fit.
    """
    return np.concatenate(
        [as_pixels(a) for a in sample_blocks(levels, blocks=blocks, block_px=block_px, seed=seed)]
    )


def sample_blocks(
    levels, blocks: int = SAMPLE_BLOCKS, block_px: int = SAMPLE_BLOCK_PX, seed: int = 0
) -> list[np.ndarray]:
    """The images behind :func:`sample_levels`: the level-0 tissue blocks (H, W, 3) as read,
    or the whole image when it is small (a learned normaliser runs its network on them)."""
    import dask
    import dask.array as da

    levels = [
        lv if isinstance(lv, da.Array) else da.from_array(lv, chunks=(block_px, block_px, 3))
        for lv in levels
    ]
    h0, w0 = levels[0].shape[:2]
    if h0 * w0 <= READ_WHOLE_PX:
        return [np.asarray(levels[0].compute())]
    coarse = levels[-1]
    ch, cw = coarse.shape[:2]
    if ch * cw > MASK_PX:  # a strided view is plenty to locate tissue blocks (and keeps memory low)
        step = int(np.ceil(np.sqrt(ch * cw / MASK_PX)))
        coarse = coarse[::step, ::step]
    small = coarse.compute()
    sy, sx = h0 / small.shape[0], w0 / small.shape[1]
    tissue = tissue_selection(as_pixels(small)).reshape(small.shape[:2])
    # Tissue fraction of each candidate level-0 block, from the coarse mask.
    rows, cols = int(np.ceil(h0 / block_px)), int(np.ceil(w0 / block_px))
    yy, xx = np.nonzero(tissue)
    counts = np.zeros((rows, cols))
    np.add.at(
        counts,
        (
            np.minimum((yy * sy / block_px).astype(int), rows - 1),
            np.minimum((xx * sx / block_px).astype(int), cols - 1),
        ),
        1.0,
    )
    per_block = max(1.0, (block_px / sy) * (block_px / sx))
    frac = counts / per_block
    candidates = np.flatnonzero(frac.ravel() >= 0.5)
    if len(candidates) < blocks:  # little tissue: take the most tissue-rich blocks there are
        candidates = np.argsort(-frac.ravel())[: max(blocks, len(candidates))]
        candidates = candidates[frac.ravel()[candidates] > 0]
    if len(candidates) == 0:
        return [np.asarray(small)]  # no tissue anywhere: the fit will say so
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=min(blocks, len(candidates)), replace=False)
    regions = []
    for i in sorted(chosen):
        r, c = divmod(int(i), cols)
        regions.append(
            levels[0][r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px]
        )
    return [np.asarray(a) for a in dask.compute(*regions)]


def sample_slide(slide, max_pixels: int = MAX_FIT_PIXELS, seed: int = 0) -> np.ndarray:
    """Tissue pixels of an opened :class:`~napari_nucleiseg.io.Slide` (see
    :func:`sample_levels`)."""
    return sample_levels(slide.pyramid(), max_pixels=max_pixels, seed=seed)


def sample_image_or_slide(path: str | Path, max_pixels: int = MAX_FIT_PIXELS) -> np.ndarray:
    """Pixels to fit on from a file: a plain image whole, a whole slide sampled from its tissue."""
    from ..io import open_slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # µm/px does not matter for colours
        slide = open_slide(path)
    try:
        return sample_slide(slide, max_pixels)
    finally:
        slide.close()


def adapt_to_levels(normaliser, levels, name: str | None = None, mpp: float | None = None):
    """``normaliser`` adapted to a multiscale image, unless it already is. A learned normaliser
    gets the sampled blocks themselves (its network runs on them) and ``mpp``, level 0's µm/px
    where known."""
    if normaliser.adapted:
        return normaliser
    if getattr(normaliser, "method", "") == "learned":
        return normaliser.adapt(sample_blocks(levels), name=name, mpp=mpp)
    return normaliser.adapt(sample_levels(levels, normaliser.max_pixels), name=name)


def adapt_to_slide(normaliser, slide):
    """``normaliser`` adapted once to a whole :class:`~napari_nucleiseg.io.Slide` (sampled from its
    tissue at full resolution), unless it already is: call this before a tile loop so every tile
    of the slide gets the same colour mapping."""
    return adapt_to_levels(normaliser, slide.pyramid(), name=slide.path.name, mpp=slide.mpp)


def normalise_levels(levels, normaliser, name: str | None = None, mpps=None) -> list:
    """Lazily normalised copies of a multiscale RGB image (list of dask arrays, finest first).

    Same shapes, chunks and dtype (uint8, last axis 3). If ``normaliser`` is not yet adapted to
    this image, it is adapted first from a sample of its tissue (one small read, see
    :func:`sample_levels`); nothing else is computed until a chunk is asked for.

    A learned normaliser (a network: each output pixel depends on its neighbours) computes each
    chunk with a margin of its neighbours (``dask.array.map_overlap``), so chunks join without
    seams; ``mpps`` (µm/px per level, where known) lets it work at its own scale.
    """
    import dask.array as da

    normaliser = adapt_to_levels(normaliser, levels, name=name, mpp=mpps[0] if mpps else None)
    token = normaliser_token(normaliser)
    learned = getattr(normaliser, "method", "") == "learned"
    out = []
    for i, lv in enumerate(levels):
        lv = lv if isinstance(lv, da.Array) else da.from_array(lv, chunks=(512, 512, 3))
        if lv.chunks[-1] != (3,):
            lv = lv.rechunk({lv.ndim - 1: 3})
        name_i = f"stain-{normaliser.method}-{token}-{lv.name}"
        meta = np.empty((0,) * lv.ndim, np.uint8)
        if learned:
            mpp = None if mpps is None else mpps[i]
            depth = _learned_depth(normaliser, mpp, lv)
            out.append(
                da.map_overlap(
                    functools.partial(_normalise_block, normaliser=normaliser, mpp=mpp),
                    lv,
                    depth={0: depth, 1: depth, 2: 0},
                    boundary="none",
                    trim=True,
                    dtype=np.uint8,
                    name=name_i,
                    meta=meta,
                )
            )
            continue
        out.append(
            da.map_blocks(_normalise_block, lv, normaliser, dtype=np.uint8, name=name_i, meta=meta)
        )
    return out


def _learned_depth(normaliser, mpp, lv) -> int:
    """Margin (level pixels) a learned normaliser's chunk needs: its context, in this level's
    pixels when it works at its own, coarser scale; never more than the smallest chunk."""
    from .learned_normaliser import CONTEXT_PX, RESCALE_BELOW

    factor = 1.0 if mpp is None else float(mpp) / normaliser.mpp
    depth = CONTEXT_PX if factor >= RESCALE_BELOW else int(np.ceil(CONTEXT_PX / factor))
    smallest = min(min(lv.chunks[0]), min(lv.chunks[1]))
    return int(min(depth, smallest))


def _normalise_block(block: np.ndarray, normaliser, mpp=None) -> np.ndarray:
    if mpp is not None:
        return normaliser.transform(block, mpp=mpp)
    return normaliser.transform(block)


def normaliser_token(normaliser) -> str:
    """A short stable hash of what the mapping depends on (target and source profiles; a learned
    normaliser's weights)."""
    import hashlib
    import json

    if hasattr(normaliser, "token"):
        return normaliser.token()
    payload = {
        "target": normaliser.profile.to_dict(),
        "source": None if normaliser.source is None else normaliser.source.to_dict(),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
