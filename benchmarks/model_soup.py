"""Average the weights of sibling training runs into one run folder ("model soup").

    python benchmarks/model_soup.py runs/soup RUN_OR_SAFETENSORS [RUN_OR_SAFETENSORS ...]
    nucleiseg release-model runs/soup --name nuclei-unet-soup --version 6.0.0 \\
        --out-dir runs/release --train-data ../shared/data/nuclei/monuseg2018_train \\
        --test-data ../shared/data/nuclei/monuseg2018_test

Wortsman et al. 2022: networks fine-tuned from one parent often sit in one basin, and the
uniform average of their weights can beat each of them, out of distribution too, at no cost at
inference. Each source is a run folder (its ``checkpoint.pt``) or a model's ``.safetensors``;
all must be the same architecture. Floating-point tensors (batch-norm statistics included) are
averaged; counters are taken from the first. The folder gets the last run folder's
``config.json`` (its held-out lists and data), so ``release-model`` tunes and scores it exactly
as it did that run.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def load_state(source: Path) -> dict:
    import torch

    if source.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(source))
    return torch.load(source / "checkpoint.pt", weights_only=True, map_location="cpu")["model"]


def main(argv=None):
    import torch

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    out, sources = Path(argv[0]), [Path(p) for p in argv[1:]]
    runs = [s for s in sources if s.is_dir()]
    if not runs:
        sys.exit("model_soup: give at least one run folder (its config.json describes the soup)")
    states = [load_state(s) for s in sources]
    for s, state in zip(sources, states):
        if state.keys() != states[0].keys() or any(
            state[k].shape != states[0][k].shape for k in state
        ):
            sys.exit(f"model_soup: {s}: not the same architecture as {sources[0]}")
    soup = {
        k: sum(st[k].double() for st in states).div(len(states)).to(t.dtype)
        if t.is_floating_point()
        else t.clone()
        for k, t in states[0].items()
    }
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(runs[-1] / "config.json", out / "config.json")
    torch.save({"model": soup, "opt": None, "iter": 0}, out / "checkpoint.pt")
    print(f"wrote {out}: the mean of {len(states)} ({', '.join(map(str, sources))})")


if __name__ == "__main__":
    main()
