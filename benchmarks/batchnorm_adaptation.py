"""Would re-estimating the network's batch-norm statistics on each image help on other stains?

    python benchmarks/batchnorm_adaptation.py [--model nuclei-unet-v5] [--alphas 0.25,0.5,1]
        [--out benchmarks/results/batchnorm_adaptation.json]

"AdaBN" (Li et al. 2016): a network's batch-norm layers normalise with the mean and variance
seen in training; on a slide from another lab those statistics are off. Here the statistics
are measured on each image itself (one pass over it, PyTorch, the card's test-time flips),
and the network then runs with ``(1 - alpha) * training + alpha * image`` statistics. Alpha 0
is the model as shipped (but in PyTorch fp32, not the int8 ONNX it ships with).

Image sets, scored with the card's post-processing by aggregate AJI:

- ``monuseg_heldout``: the 4 MoNuSeg training images the card holds out (selection),
- ``dsb_colour_heldout``, ``monuseg_test_restained``, ``monuseg_test_sites``: as in
  ``generalisation.py``.

Why it is only a measurement: the shipped runtime folds batch norm into int8 convolutions, so
adapting it per slide would mean a statistics pass over the slide's tissue and an fp32 network
(slower) before any tile is segmented. It would have to win clearly to pay for that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None):
    import torch
    from generalisation import NUCLEI, cases, summary
    from safetensors.torch import load_file

    from napari_nucleiseg.methods.learned import load_card
    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.models import find_card
    from napari_nucleiseg.segmentation.postprocess import PostprocessSettings, instances_from_maps
    from napari_nucleiseg.segmentation.predict import Predictor
    from napari_nucleiseg.segmentation.unet import UNet
    from napari_nucleiseg.training.nuclei_data import load_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="nuclei-unet-v5")
    ap.add_argument("--alphas", default="0.25,0.5,1")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/batchnorm_adaptation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    card_path = find_card(args.model)[0]
    card = load_card(card_path)
    net = UNet(tuple(card.widths), decoder=card.decoder)
    net.load_state_dict(load_file(str(card_path.parent / card.weights)))
    settings = PostprocessSettings(**card.postprocess)
    predictor = Predictor(net, card.mpp, settings=settings, halo=round(card.context_um / card.mpp))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trained = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    alphas = [0.0] + [float(a) for a in args.alphas.split(",")]

    config = json.loads(
        (REPO / "benchmarks/results" / f"{card.name}_training_config.json").read_text()
    )
    held = config["holdout"]
    data = {"monuseg_heldout": (load_dataset(NUCLEI / "monuseg2018_train", stems=held), None)}
    data.update({k: v for k, v in cases().items() if k != "dsb_colour_all"})
    data.pop("dsb_grey_brightfield")

    results: dict = {}
    for case, (images, groups) in data.items():
        scores: dict = {a: [] for a in alphas}
        for im in images:
            net.eval()
            for m in norms:  # measure this image's statistics: a cumulative mean over the pass
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                predictor.maps(im.rgb, im.mpp)
            seen = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
            net.eval()
            for a in alphas:
                with torch.no_grad():
                    for m, (tm, tv), (sm, sv) in zip(norms, trained, seen):
                        m.running_mean.copy_((1 - a) * tm + a * sm)
                        m.running_var.copy_((1 - a) * tv + a * sv)
                labels = instances_from_maps(predictor.maps(im.rgb, im.mpp), im.mpp, settings)
                scores[a].append(score_image(im.labels, labels, im.stem))
        results[case] = {str(a): summary(s, groups) for a, s in scores.items()}
        for a in alphas:
            r = results[case][str(a)]
            print(
                f"{case:<24} alpha {a:<5} AJI {r['aji']:.4f}  F1 {r['f1']:.4f}  "
                f"precision {r['precision']:.3f}  recall {r['recall']:.3f}  fg {r['fg_ratio']:.3f}",
                flush=True,
            )
    held_out = ("monuseg_heldout", "dsb_colour_heldout")
    selection = {
        str(a): round(sum(results[c][str(a)]["aji"] for c in held_out) / 2, 4) for a in alphas
    }
    print("selection score (mean of the two held-out sets):", selection)
    record = {
        "benchmark": "batchnorm_adaptation",
        "model": card.name,
        "runtime": "torch fp32 (alpha 0 = the model's own statistics)",
        "statistics": "measured per image, one pass with the card's test-time flips",
        "selection_score": selection,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
