"""Repository hygiene a reader relies on: no unresolved merge conflicts in tracked text, and every
model card in the package matches the weight files beside it (not only the default's)."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".json", ".cfg", ".txt")


def _tracked_text_files():
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / f for f in out.splitlines() if f.endswith(TEXT) and (REPO / f).is_file()]


def test_no_merge_conflict_markers_in_tracked_files():
    bad = []
    for path in _tracked_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                bad.append(f"{path.relative_to(REPO)}:{n}: {line[:40]}")
    assert not bad, "unresolved merge conflicts:\n" + "\n".join(bad)


def test_every_shipped_model_card_matches_its_files():
    from napari_nucleiseg.models import MODELS_DIR, load_card
    from napari_nucleiseg.models.registry import sha256_of

    cards = sorted(MODELS_DIR.glob("*.json"))
    assert cards, "no model cards shipped"
    for path in cards:
        card = load_card(path.stem)
        assert card.name == path.stem
        for name, digest in (
            (card.weights, card.sha256),
            (card.onnx, card.onnx_sha256),
            (card.onnx_int8, card.onnx_int8_sha256),
        ):
            if name:
                assert sha256_of(MODELS_DIR / name) == digest, (
                    f"{path.name}: {name} does not match its hash"
                )
        if card.kind == "classifier":  # its held-out LC25000 groups
            assert card.metrics.get("lc25000_heldout_groups", {}).get("auc", 0) > 0.9, path.name
        elif card.kind == "normaliser":  # its nuclei decoder on MoNuSeg test
            decoder = card.metrics.get("benchmark", {}).get("monuseg2018_test_mask_decoder", {})
            assert decoder.get("aji", 0) > 0.6, path.name
        else:
            assert card.metrics.get("monuseg2018_test", {}).get("aji", 0) > 0.6, path.name
