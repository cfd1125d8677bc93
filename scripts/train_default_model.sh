#!/usr/bin/env bash
# Train the shipped default nuclei model from scratch, in one command:
#   bash scripts/train_default_model.sh          (about 4.5 h on two idle cores; run it with nohup)
# nuclei-unet-v3 first (8,000 iterations in four cosine cycles), then nuclei-unet-v4 started from
# it (a sixth level, 3,000 iterations), then nuclei-unet-v5 started from v4 (3,000 iterations with
# a quarter of each batch from the DSB 2018 brightfield crops and wide augmentation). Every step
# resumes: after a kill, run the same command. Releases (tuned post-processing, ONNX + int8,
# test-set figures) go to $RUNS/release; copy the nuclei-unet-v5.* files to
# src/napari_nucleiseg/models/ to ship them.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/nuclei}
RUNS=${RUNS:-runs}
NUCLEISEG=${NUCLEISEG:-.venv/bin/nucleiseg}
SETS=(--train-data "$DATA/monuseg2018_train" --test-data "$DATA/monuseg2018_test" --out-dir "$RUNS/release")
mkdir -p "$RUNS/release"

"$NUCLEISEG" train --data "$DATA/monuseg2018_train" --out "$RUNS/seg-v3" \
    --cycles 2000,2000,2000,2000 --cycle-lr-decay 0.5 --widths 12,24,48,96,192 --decoder light
[ -f "$RUNS/release/nuclei-unet-v3.json" ] || "$NUCLEISEG" release-model "$RUNS/seg-v3" --name nuclei-unet-v3 --version 3.0.0 "${SETS[@]}"

"$NUCLEISEG" train --data "$DATA/monuseg2018_train" --out "$RUNS/seg-v4" \
    --cycles 1500,1500 --cycle-lr-decay 0.5 --lr 1.5e-3 --widths 12,24,48,96,192,384 --decoder light \
    --init-from "$RUNS/release/nuclei-unet-v3.json"
[ -f "$RUNS/release/nuclei-unet-v4.json" ] || "$NUCLEISEG" release-model "$RUNS/seg-v4" --name nuclei-unet-v4 --version 4.0.0 "${SETS[@]}"

"$NUCLEISEG" train --data "$DATA/monuseg2018_train" --out "$RUNS/seg-v5" \
    --cycles 1500,1500 --cycle-lr-decay 0.5 --lr 1e-3 --widths 12,24,48,96,192,384 --decoder light \
    --init-from "$RUNS/release/nuclei-unet-v4.json" \
    --extra-data "$DATA/dsb2018_stage1_train:colour" --extra-share 0.25 --augment wide
"$NUCLEISEG" release-model "$RUNS/seg-v5" --name nuclei-unet-v5 --version 5.0.0 "${SETS[@]}"
