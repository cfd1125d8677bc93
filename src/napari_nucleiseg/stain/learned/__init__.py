"""The learned stain normaliser of reference 002 (issue 18): networks and losses.

A CycleGAN between many-stain tissue (X) and the lab's reference style (Y) whose generators also
segment nuclei: :class:`CycleGenerator` (one encoder, a normalisation decoder with
attention-gated skips, a nuclei decoder; the student adds a Transformer bottleneck);
:class:`PatchDiscriminator` judges style; :mod:`.losses` holds the LSGAN, cycle, segmentation
and identity terms and their weighted sums. The networks and losses need PyTorch (the ``train``
extra) and are imported on first use; running a trained normaliser does not need them
(:mod:`napari_nucleiseg.stain.learned_normaliser`).
"""

# Lazy: :mod:`.data` (tile pools) is used without PyTorch; the networks and losses need it.
_FROM = {
    **dict.fromkeys(
        (
            "CycleMaps",
            "CyclePass",
            "LossWeights",
            "cycle_loss",
            "cycle_maps",
            "colour_moment_loss",
            "lab_moments",
            "cycle_pass",
            "discriminator_objective",
            "generator_objective",
            "lsgan_discriminator_loss",
            "lsgan_generator_loss",
            "segmentation_loss",
        ),
        "losses",
    ),
    **dict.fromkeys(
        (
            "AttentionGate",
            "CycleGenerator",
            "NormalisePath",
            "PatchDiscriminator",
            "SegmentPath",
            "TransformerLayer",
            "count_parameters",
            "load_generator",
            "new_generator",
            "sinusoidal_positions_2d",
        ),
        "network",
    ),
}


def __getattr__(name):
    if name in _FROM:
        import importlib

        return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_FROM)
