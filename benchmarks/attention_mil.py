"""Does attention MIL find the tumour patches in a region labelled only "holds tumour"?

    python benchmarks/attention_mil.py [--model NAME_OR_CARD] [--organs colon lung]
                                       [--iterations 300] [--seeds 3] [--k 16]
                                       [--out benchmarks/results/attention_mil.json]

Bags with known members, from real LC25000 tiles (``../shared/data/tissue``): each tile is read at
the classifier's µm/px (LC25000: 1.37 µm/px) and cut into the classifier's patches
(``image_patches``); every patch is embedded once with the classifier's encoder
(``ClassifierMethod.embed``). A negative bag is 32-64 patches of normal tiles; a positive bag the
same with a share of tumour-tile patches, the truly positive members, drawn uniformly in 10-30 %
(a clear minority) or in 2-6 % (1-4 patches: a small focus, where sampling matters). Tiles
are split by ``group`` (LC25000's augmented copies of one source stay on one side): test bags
come from the groups the classifier's card lists as held out, which neither its encoder nor the
MIL head ever saw (``--split half``: half the groups of each class, as the first runs did).

For each organ, each sampling scheme (``all`` patches; ``random`` subset of ``k``; one per k-means
``cluster``, ``k`` clusters; applied to training and test bags alike) and each pooling (gated
``attention``, ``max``, ``mean``), a MIL head is trained on the training bags for a fixed number
of iterations (results do not depend on the machine's load), with several seeds, and scored:

- **bag AUC** on the test bags (scored from the sampled patches, as deployed);
- **instance AUC** inside each positive test bag, over *all* its patches (the heatmap is drawn
  over all tissue whatever the sampling used to train), averaged over bags: of the attention
  weights (for max pooling the one-hot of the deciding patch, for mean uniform: 0.5 by
  construction) and of the instance scores (each patch's probability under the bag classifier);
- **top-1**: the share of positive test bags whose highest-attention patch is a tumour patch (the
  brightest spot of the map; for mean pooling the first patch, i.e. chance);
- the share of positive test bags whose sample kept at least one tumour patch.

Reference lines: the patch classifier's own ``p_tumour`` (instance AUC inside positive bags and
whether the top patch is tumour; bag AUC of its max over the bag, and of its mean in the JSON).
The first runs split half the groups, so the shipped encoder had seen the test patches' source
images with their tile labels; the default split now keeps the test bags to tissue the encoder
never saw. A colon-only classifier (``results/attention_mil_dev.json``: a 1-minute development
model) leaves lung as an organ its encoder has not seen, where the bag labels do more of the work.

Re-run with ``--model`` after shipping a new default classifier (default: the shipped default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TISSUE = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data" / "tissue"
LC25000_MPP = 1.37
BAG_SIZE = (32, 64)
#: Share of tumour patches in a positive bag: a region with a clear tumour minority, and a sparse
#: one (1-4 patches of 32-64) where a random subset of k often misses every tumour patch.
WITNESS_SHARES = {"10-30%": (0.10, 0.30), "2-6%": (0.02, 0.06)}


def embed_organ(method, organ: str, tiles_per_group: int, cache: Path | None = None):
    """Patches of one organ's tiles: ``(probs, embeddings, is_tumour, tile_index, tiles)``.
    With ``cache``, the embeddings are kept in ``cache`` under the model's SHA-256 (tuning the
    MIL head should not re-embed thousands of patches each time); the tiles then come back
    without pixels (only ``tag`` and ``group`` are used)."""
    from napari_nucleiseg.classification.tiles import LabelledTile, load_tiles
    from napari_nucleiseg.methods.classifier import image_patches

    index = json.loads((TISSUE / "index.json").read_text())["images"]
    rows, per_group = [], {}
    for r in index:
        if r["organ"] != organ or r["label"] not in ("tumour", "normal"):
            continue
        # A group's tiles are augmented copies of one image: a few add little but cost time.
        if per_group.get(r["group"], 0) >= tiles_per_group:
            continue
        per_group[r["group"]] = per_group.get(r["group"], 0) + 1
        # The 224-px tiles are 768-px fields shrunk by LC25000's uploaders: 1.37 µm/px; the few
        # 768-px originals in the index (their own groups) are at 1.37 · 224 / 768 = 0.40.
        mpp = LC25000_MPP * 224 / r.get("size", 224)
        rows.append(
            {"file": TISSUE / r["file"], "label": r["label"], "group": r["group"], "mpp": mpp}
        )
    file = None
    if cache is not None:
        file = cache / f"mil_{method.card.sha256[:16]}_{organ}_{tiles_per_group}.npz"
        if file.exists():
            z = np.load(file)
            tiles = [
                LabelledTile(np.zeros((0, 0, 3), np.uint8), str(tag), method.mpp, group=str(g))
                for tag, g in zip(z["tags"], z["groups"], strict=True)
            ]
            owner = z["owner"]
            tumour = np.array([tiles[i].tag == "tumour" for i in owner])
            return z["probs"], z["emb"], tumour, owner, tiles
    tiles = load_tiles(rows, None, method.mpp)
    patches, owner = [], []
    for i, t in enumerate(tiles):
        p = image_patches(t.rgb, method.tile_px)
        patches.append(p)
        owner += [i] * len(p)
    patches = np.concatenate(patches)
    probs, emb = method.embed(patches)
    owner = np.asarray(owner)
    tumour = np.array([tiles[i].tag == "tumour" for i in owner])
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            file, probs=probs, emb=emb, owner=owner,
            tags=np.array([t.tag for t in tiles]), groups=np.array([t.group for t in tiles]),
        )  # fmt: skip
    return probs, emb, tumour, owner, tiles


def make_bags(normal_idx, tumour_idx, n_pos, n_neg, share, rng):
    """``[(patch indices, bag label, truth per member)]``: negatives all normal, positives with
    a share of tumour patches drawn uniformly in ``share`` (at least one), members shuffled."""
    bags = []
    for label in [1] * n_pos + [0] * n_neg:
        n = int(rng.integers(BAG_SIZE[0], BAG_SIZE[1] + 1))
        m = max(1, round(rng.uniform(*share) * n)) if label else 0
        members = np.concatenate(
            [rng.choice(tumour_idx, m, replace=False), rng.choice(normal_idx, n - m, replace=False)]
        ).astype(np.int64)
        truth = np.arange(n) < m
        order = rng.permutation(n)
        bags.append((members[order], label, truth[order]))
    return bags


def mean_instance_auc(bags, score_fn):
    from napari_nucleiseg.metrics.classification import roc_auc

    return float(np.mean([roc_auc(truth, score_fn(members)) for members, y, truth in bags if y]))


def top1_hit(bags, score_fn):
    """Share of positive bags whose highest-scoring patch is a tumour patch (what a pathologist
    looking at the brightest spot of the map sees)."""
    return float(np.mean([truth[int(np.argmax(score_fn(m)))] for m, y, truth in bags if y]))


def run_organ(method, organ, args, log):
    from napari_nucleiseg.classification.mil import MILConfig, fit_mil, sample_bag
    from napari_nucleiseg.classification.tiles import grouped_split
    from napari_nucleiseg.metrics.classification import roc_auc

    t0 = time.perf_counter()
    probs, emb, tumour, owner, tiles = embed_organ(method, organ, args.tiles_per_group, args.cache)
    t_embed = time.perf_counter() - t0
    log(f"{organ}: {len(tiles)} tiles, {len(emb)} patches embedded in {t_embed:.0f} s")
    p_tumour = probs[:, method.classes.index("tumour")]
    held = set(method.card.training.get("heldout_groups") or ())
    if args.split == "encoder" and held:
        # Test bags only from groups the classifier (the encoder) never trained on.
        test_tiles = [t for t in tiles if t.group in held]
        train_tiles = [t for t in tiles if t.group not in held]
    else:
        train_tiles, test_tiles = grouped_split(tiles, 0.5, seed=args.seed)
    train_ids = {id(t) for t in train_tiles}
    train_groups = {t.group for t in train_tiles}
    assert not train_groups & {t.group for t in test_tiles}, "a group on both sides"
    in_train = np.array([id(tiles[i]) in train_ids for i in owner])
    pools = {
        side: (np.flatnonzero(~tumour & mask), np.flatnonzero(tumour & mask))
        for side, mask in (("train", in_train), ("test", ~in_train))
    }
    rows, refs = [], []
    for regime, share in WITNESS_SHARES.items():
        rng = np.random.default_rng(args.seed)
        train_bags = make_bags(*pools["train"], args.train_bags, args.train_bags, share, rng)
        test_bags = make_bags(*pools["test"], args.test_bags, args.test_bags, share, rng)
        test_y = [y for _, y, _ in test_bags]
        refs.append(
            {
                "organ": organ,
                "witnesses": regime,
                "instance_auc_p_tumour": mean_instance_auc(test_bags, lambda m: p_tumour[m]),
                "top1_p_tumour": top1_hit(test_bags, lambda m: p_tumour[m]),
                "bag_auc_max_p_tumour": roc_auc(
                    test_y, [p_tumour[m].max() for m, _, _ in test_bags]
                ),
                "bag_auc_mean_p_tumour": roc_auc(
                    test_y, [p_tumour[m].mean() for m, _, _ in test_bags]
                ),
            }
        )
        log(f" witnesses {regime}: classifier p_tumour instance AUC "
            f"{refs[-1]['instance_auc_p_tumour']:.3f}, bag AUC (max) "
            f"{refs[-1]['bag_auc_max_p_tumour']:.3f}")  # fmt: skip
        for sampling in ("all", "random", "cluster"):

            def sample(bags, offset, sampling=sampling):
                return [
                    m[sample_bag(emb[m], sampling, args.k, seed=offset + j)]
                    for j, (m, _, _) in enumerate(bags)
                ]

            train_s, test_s = sample(train_bags, 0), sample(test_bags, 10_000)
            pairs = list(zip(test_s, test_bags, strict=True))
            kept = float(np.mean([tumour[s].any() for s, (_, y, _) in pairs if y]))
            for pooling in ("attention", "max", "mean"):
                per_seed = []
                for seed in range(args.seeds):
                    cfg = MILConfig(pooling=pooling, iterations=args.iterations, seed=seed)
                    t1 = time.perf_counter()
                    model = fit_mil(
                        [(emb[s], y) for s, (_, y, _) in zip(train_s, train_bags, strict=True)],
                        cfg,
                        threads=1,
                    )
                    secs = time.perf_counter() - t1

                    def attn(m, model=model):
                        return model.attention(emb[m])

                    def score(m, model=model):
                        return model.instance_scores(emb[m])

                    per_seed.append(
                        {
                            "bag_auc": roc_auc(test_y, [model.predict(emb[s]) for s in test_s]),
                            "instance_auc_attention": mean_instance_auc(test_bags, attn),
                            "instance_auc_scores": mean_instance_auc(test_bags, score),
                            "top1_attention": top1_hit(test_bags, attn),
                            "train_seconds": secs,
                            "final_loss": model.meta["training"]["final_loss"],
                        }
                    )
                row = {
                    "organ": organ,
                    "witnesses": regime,
                    "sampling": sampling,
                    "pooling": pooling,
                }
                for key in METRICS:
                    vals = [r[key] for r in per_seed]
                    row[key] = float(np.mean(vals))
                    row[key + "_sd"] = float(np.std(vals))
                row["positives_kept"] = kept
                row["seeds"] = per_seed
                rows.append(row)
                log(
                    f"  {sampling:8s} {pooling:9s} bag {row['bag_auc']:.3f}  "
                    f"attention {row['instance_auc_attention']:.3f} "
                    f"(top-1 {row['top1_attention']:.2f})  "
                    f"scores {row['instance_auc_scores']:.3f}  kept {kept:.2f}"
                )
    summary = {
        "organ": organ,
        "tiles": len(tiles),
        "patches": int(len(emb)),
        "train_groups": len(train_groups),
        "test_groups": len({t.group for t in test_tiles}),
        "train_patches": int(in_train.sum()),
        "test_patches": int((~in_train).sum()),
        "embed_seconds": t_embed,
        "reference": refs,
    }
    return summary, rows


METRICS = ("bag_auc", "instance_auc_attention", "top1_attention", "instance_auc_scores")


def print_table(summaries, rows):
    head = (
        f"{'organ':6s} {'tumour':7s} {'sampling':9s} {'pooling':10s} {'bag AUC':>13s} "
        f"{'inst AUC attn':>13s} {'top-1':>5s} {'inst AUC score':>14s} {'kept':>5s}"
    )
    print(head)
    print("-" * len(head))
    for s in summaries:
        for ref in s["reference"]:
            print(
                f"{s['organ']:6s} {ref['witnesses']:7s} {'all':9s} {'p_tumour':10s} "
                f"{ref['bag_auc_max_p_tumour']:>5.3f} (max)  {'':>13s} "
                f"{ref['top1_p_tumour']:>5.2f} {ref['instance_auc_p_tumour']:>14.3f} {1:>5.2f}"
            )
            for r in rows:
                if r["organ"] != s["organ"] or r["witnesses"] != ref["witnesses"]:
                    continue
                print(
                    f"{r['organ']:6s} {r['witnesses']:7s} {r['sampling']:9s} {r['pooling']:10s} "
                    f"{r['bag_auc']:>5.3f} ± {r['bag_auc_sd']:.3f} "
                    f"{r['instance_auc_attention']:>5.3f} ± {r['instance_auc_attention_sd']:.3f} "
                    f"{r['top1_attention']:>5.2f} "
                    f"{r['instance_auc_scores']:>6.3f} ± {r['instance_auc_scores_sd']:.3f} "
                    f"{r['positives_kept']:>5.2f}"
                )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="classifier name or card (default: shipped)")
    ap.add_argument("--organs", nargs="+", default=["colon", "lung"])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--k", type=int, default=16, help="patches kept by random/cluster sampling")
    ap.add_argument("--train-bags", type=int, default=60, help="per class")
    ap.add_argument("--test-bags", type=int, default=100, help="per class")
    ap.add_argument("--tiles-per-group", type=int, default=2)
    ap.add_argument(
        "--split", choices=("encoder", "half"), default="encoder",
        help="encoder: test bags from the groups the classifier's card lists as held out (none "
        "of them seen by the encoder), training bags from the rest; half: half the groups",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="keep embeddings in this folder")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/attention_mil.json")
    args = ap.parse_args(argv)

    from napari_nucleiseg.methods import get_method

    if not (TISSUE / "index.json").exists():
        print(f"{TISSUE} not found (../shared is absent)", file=sys.stderr)
        return 2
    method = get_method(args.model, kind="classifier")

    def log(msg):
        print(msg, flush=True)

    log(f"classifier {method.name} ({method.card_path}), {method.mpp} µm/px, "
        f"{method.tile_px}-px patches, runtime {method.runtime(warn=False)}")  # fmt: skip
    t0 = time.perf_counter()
    summaries, rows = [], []
    for organ in args.organs:
        s, r = run_organ(method, organ, args, log)
        summaries.append(s)
        rows += r
    print()
    print_table(summaries, rows)
    result = {
        "benchmark": "attention_mil",
        "classifier": {
            "name": method.name,
            "card": str(method.card_path),
            "sha256": method.card.sha256,
            "mpp": method.mpp,
            "tile_px": method.tile_px,
        },
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "bag_size": BAG_SIZE,
            "witness_shares": WITNESS_SHARES,
            "split": (
                "test bags from the LC25000 groups the classifier's card holds out (the encoder "
                "never saw them), training bags from the others"
                if args.split == "encoder" and method.card.training.get("heldout_groups")
                else "grouped by LC25000 group, half the groups of each class held out"
            ),
            "instance_auc": "mean over positive test bags of the within-bag AUC, all patches",
            "top1": "share of positive test bags whose highest-scoring patch is tumour",
        },
        "organs": summaries,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
