"""Read-path throughput: raw ``openslide.read_region`` versus our lazy dask pyramid, same run.

For each slide, the same list of 512x512 level-0 regions (aligned to the 512 grid, as napari and
the tile jobs ask for them; plus an unaligned set) is read once by each method, each starting from
a freshly opened slide so no method inherits another's tile cache. Rounds alternate the order of
methods and the table reports the median. Throughput is megapixels per second; the ratio column is
each method against raw OpenSlide measured in the same round. A last section reads screen-sized
2048x1024 views (one OpenSlide call against one dask read of 8 chunks), which is what panning costs.

    python benchmarks/read_throughput.py [--regions 96] [--rounds 3]
        [--out benchmarks/results/read_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_SLIDES = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "slides"
TILE = 512


def regions_for(shape, n, aligned, seed):
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for _ in range(n):
        if aligned:
            y = int(rng.integers(0, max(1, (h - TILE) // TILE + 1))) * TILE
            x = int(rng.integers(0, max(1, (w - TILE) // TILE + 1))) * TILE
        else:
            y, x = int(rng.integers(0, h - TILE)), int(rng.integers(0, w - TILE))
        out.append((x, y))
    return out


def _timed(opener, read_all):
    """Seconds ``read_all(handle)`` takes on a freshly opened handle (no inherited tile cache)."""
    handle = opener()
    t = time.perf_counter()
    read_all(handle)
    dt = time.perf_counter() - t
    handle.close()
    return dt


def _raw(path):
    import openslide

    return openslide.OpenSlide(str(path))


def _ours(path):
    from napari_nucleiseg.io import open_slide

    return open_slide(path)


def raw_openslide(path, regions):
    return _timed(
        lambda: _raw(path),
        lambda o: [
            np.asarray(o.read_region((x, y), 0, (TILE, TILE)))[:, :, :3] for x, y in regions
        ],
    )


def ours_dask_batch(path, regions):
    import dask

    def read_all(s):
        level0 = s.pyramid(TILE)[0]
        dask.compute(
            *[level0[y : y + TILE, x : x + TILE] for x, y in regions],
            scheduler="threads",
            num_workers=os.cpu_count(),
        )

    return _timed(lambda: _ours(path), read_all)


def ours_dask_one_by_one(path, regions):
    # What napari does for each view: np.asarray on a slice of the level.
    return _timed(
        lambda: _ours(path),
        lambda s: [np.asarray(s.pyramid(TILE)[0][y : y + TILE, x : x + TILE]) for x, y in regions],
    )


def ours_read_region(path, regions):
    return _timed(
        lambda: _ours(path), lambda s: [s.read_region(x, y, TILE, TILE, 0) for x, y in regions]
    )


VIEW = (1024, 2048)  # rows, cols: about what a full-HD canvas shows at full resolution


def raw_openslide_views(path, regions):
    return _timed(
        lambda: _raw(path),
        lambda o: [
            np.asarray(o.read_region((x, y), 0, (VIEW[1], VIEW[0])))[:, :, :3] for x, y in regions
        ],
    )


def ours_dask_views(path, regions):
    return _timed(
        lambda: _ours(path),
        lambda s: [
            np.asarray(s.pyramid(TILE)[0][y : y + VIEW[0], x : x + VIEW[1]]) for x, y in regions
        ],
    )


VIEW_METHODS = {
    "raw openslide.read_region": raw_openslide_views,
    "ours: dask pyramid, np.asarray per view": ours_dask_views,
}

METHODS = {
    "raw openslide.read_region": raw_openslide,
    "ours: Slide.read_region": ours_read_region,
    "ours: dask pyramid, np.asarray per region": ours_dask_one_by_one,
    "ours: dask pyramid, batch (threads)": ours_dask_batch,
}


def compare(methods, path, regions, px_per_region, rounds, row) -> list[dict]:
    """Median MP/s of each method and its ratio to raw OpenSlide over ``rounds`` rounds that
    alternate the order of methods."""
    mp = len(regions) * px_per_region / 1e6
    per_method = {m: [] for m in methods}
    ratios = {m: [] for m in methods}
    for r in range(rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        times = {m: methods[m](path, regions) for m in order}
        for m in methods:
            per_method[m].append(mp / times[m])
            ratios[m].append(times["raw openslide.read_region"] / times[m])
    return [
        row
        | {
            "method": m,
            "regions": len(regions),
            "mp_per_s": statistics.median(per_method[m]),
            "ratio_vs_raw_openslide": statistics.median(ratios[m]),
            "rounds_mp_per_s": per_method[m],
        }
        for m in methods
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regions", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=100_000, help="edge of the synthetic slide in px")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "read_throughput.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    from napari_nucleiseg.demo import make_large_slide

    slides = []
    cmu = SHARED_SLIDES / "CMU-1-Small-Region.svs"
    if cmu.exists():
        slides.append(("CMU-1-Small-Region.svs (Aperio, 240 px JPEG tiles)", cmu))
    else:
        print(f"skipping the CMU slide: {cmu} not found", file=sys.stderr)
    tmp = tempfile.TemporaryDirectory()
    big = make_large_slide(Path(tmp.name) / "big.tif", size=(args.big, args.big))
    slides.append((f"synthetic {args.big}x{args.big} (generic TIFF, 512 px JPEG tiles)", big))

    from napari_nucleiseg.io import open_slide

    results = []
    for label, path in slides:
        shape = open_slide(path).shape
        for aligned in (True, False):
            regions = regions_for(shape, args.regions, aligned, seed=1)
            results += compare(
                METHODS,
                path,
                regions,
                TILE * TILE,
                args.rounds,
                {"slide": label, "aligned": aligned},
            )
        # Screen-sized views (what napari reads when the user pans), aligned to the chunk grid.
        regions = regions_for(
            (shape[0] - VIEW[0] + TILE, shape[1] - VIEW[1] + TILE),
            max(8, args.regions // 8),
            True,
            seed=2,
        )
        results += compare(
            VIEW_METHODS,
            path,
            regions,
            VIEW[0] * VIEW[1],
            args.rounds,
            {"slide": label, "aligned": "view", "region_px": list(VIEW)},
        )

    print(
        f"\nRead throughput, 512x512 level-0 regions, {args.regions} regions x "
        f"{args.rounds} rounds, {os.cpu_count()} cores\n"
    )
    head = f"{'slide':<52} {'regions':<10} {'method':<44} {'MP/s':>7} {'vs raw':>7}"
    print(head)
    print("-" * len(head))
    for r in results:
        regions = {True: "aligned", False: "unaligned"}.get(r["aligned"], "2048x1024")
        print(
            f"{r['slide'][:52]:<52} {regions:<10} {r['method']:<44} "
            f"{r['mp_per_s']:7.2f} {r['ratio_vs_raw_openslide']:6.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import openslide

    out.write_text(
        json.dumps(
            {
                "benchmark": "read_throughput",
                "tile": TILE,
                "regions": args.regions,
                "rounds": args.rounds,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "openslide": openslide.__library_version__,
                },
                "results": results,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
