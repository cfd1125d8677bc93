"""Build a pseudo-labelled set of foreign H&E for a noisy-student run (reference 002's teacher
and student, on slides no label covers).

    python benchmarks/pseudo_labelled_foreign.py OUT_DIR [--teacher nuclei-unet-v5]
    nucleiseg train ... --init-from nuclei-unet-v5 \\
        --extra-data ../shared/data/nuclei/dsb2018_stage1_train:colour --extra-data OUT_DIR \\
        --extra-share 0.35 --augment wide

The teacher (the shipped model, four flipped passes) labels two sources it never trained on:

- the 20 LC25000 colon originals (768 x 768, adenocarcinoma and benign; another lab, another
  scanner). They state no µm/px: each is read at the scale the teacher's own nuclei imply
  (``segmentation.scale``, twice, clipped to 0.2-1 µm/px), a rough estimate;
- the 768-px tiles of ``CMU-1-Small-Region.svs`` (Aperio, 0.499 µm/px, skin).

Images with fewer than 50 nuclei (glass, fat) are left out. The folder has the nuclei data sets'
layout (``images/``, ``labels/``, ``index.json`` without a µm/px, so training reads each image at
the scale its labels imply). The student sees these images through strong augmentation while its
labels come from the clean ones: the noise is what may teach it more than the teacher knew.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data"
LC25000 = SHARED / "tissue" / "lc25000_colon_768"
CMU = SHARED / "slides" / "CMU-1-Small-Region.svs"
TILE = 768
MIN_NUCLEI = 50


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder to write (images/, labels/, index.json)")
    ap.add_argument("--teacher", default="nuclei-unet-v5")
    args = ap.parse_args(argv)
    os.environ["NUCLEISEG_TTA"] = "4"  # the teacher at its best: four flipped passes
    import tifffile
    from PIL import Image

    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.segmentation.scale import nuclei_scale

    if not LC25000.exists() or not CMU.exists():
        sys.exit(f"{SHARED} lacks {LC25000.name} or {CMU.name}: this needs ../shared/data")
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    rows = []

    def put(stem, rgb, mpp):
        labels = segment_image(rgb, mpp, args.teacher)
        n = int(labels.max())
        print(f"{stem}: {n} nuclei at {mpp:.3f} µm/px", flush=True)
        if n < MIN_NUCLEI:
            return
        Image.fromarray(rgb).save(out / "images" / f"{stem}.png")
        tifffile.imwrite(out / "labels" / f"{stem}.tif", labels.astype(np.uint32))
        rows.append({"stem": stem, "nuclei": n, "teacher_mpp": round(mpp, 3)})

    for path in sorted(LC25000.glob("*/*.jpeg")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        mpp = 0.5
        for _ in range(2):  # the scale the teacher's own nuclei imply
            verdict = nuclei_scale(segment_image(rgb, mpp, args.teacher), mpp)
            if verdict.suggested_mpp is None:
                break
            mpp = float(np.clip(verdict.suggested_mpp, 0.2, 1.0))
        put(f"lc25000_{path.parent.name}_{path.stem}", rgb, mpp)
    slide = open_slide(CMU)
    h, w = slide.shape
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            rgb = np.ascontiguousarray(np.asarray(slide.read_region(x, y, TILE, TILE, 0))[..., :3])
            put(f"cmu1_{x}_{y}", rgb, slide.mpp)
    index = {
        "name": f"pseudo-labelled foreign H&E (teacher {args.teacher}, four flipped passes): "
        "LC25000 colon originals and CMU-1-Small-Region tiles",
        "licence": "LC25000: free for research use; CMU-1-Small-Region: CC0",
        "stain": "H&E",
        "images": rows,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {out}: {len(rows)} images, {sum(r['nuclei'] for r in rows):,} nuclei")


if __name__ == "__main__":
    main()
