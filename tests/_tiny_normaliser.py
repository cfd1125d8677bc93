"""A small learned stain normaliser, exported as a project or user model would be, for tests.

Random weights with a non-zero residual head (a new generator is the identity), so its output
differs from its input the way a trained one's does: smoothly, by colour, keeping structure."""

from __future__ import annotations

from pathlib import Path

WIDTHS = (8, 16, 32, 64)


def tiny_generator(seed: int = 0, norm_levels: int = 3, transformer_layers: int = 0):
    import torch

    from napari_nucleiseg.stain.learned import new_generator

    torch.manual_seed(seed)
    g = new_generator(WIDTHS, "light", norm_levels, transformer_layers)
    with torch.no_grad():
        g.head[-1].weight.normal_(0.0, 0.05)
        g.head[-1].bias.zero_()
        g.head[-1].bias[9:].copy_(torch.tensor([0.15, -0.1, 0.1]))  # an OD offset: a colour cast
    return g.eval()


def export_tiny_normaliser(
    folder: Path, name: str = "tiny-stain", seed: int = 0, reference_lab=None
) -> Path:
    """Card path of a tiny normaliser written to ``folder`` (``reference_lab``: the style's Lab
    statistics its colour calibration pulls to; None: a card without them)."""
    from napari_nucleiseg.training.normaliser_train import export_normaliser

    base = {
        "widths": list(WIDTHS),
        "mpp": 0.5,
        "decoder": "light",
        "postprocess": {},
        "tile_px": 512,
        "context_um": 32.0,
        "task": "stain normalisation (test model)",
        "outputs": ["rgb", "foreground", "contour", "distance"],
        "licence": "test",
    }
    reference = [0.65, 0.70, 0.29, 0.07, 0.99, 0.11, 0.6, 0.2]
    return export_normaliser(
        tiny_generator(seed), Path(folder), name, "1.0.0", base, reference, reference_lab
    )


def export_tiny_unet(folder: Path, name: str = "tiny-unet", seed: int = 0) -> Path:
    """Card path of a small random nuclei U-Net (the encoder a test normaliser starts from)."""
    import torch
    from safetensors.torch import save_file

    from napari_nucleiseg.models.registry import ModelCard, sha256_of
    from napari_nucleiseg.segmentation.unet import UNet

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file(UNet(WIDTHS, decoder="light").state_dict(), str(weights))
    card = ModelCard(
        name=name,
        version="1.0.0",
        architecture="UNet",
        widths=list(WIDTHS),
        mpp=0.5,
        sha256=sha256_of(weights),
        weights=weights.name,
        decoder="light",
        tile_px=512,
        licence="test",
    )
    path = folder / f"{name}.json"
    path.write_text(card.to_json() + "\n")
    return path
