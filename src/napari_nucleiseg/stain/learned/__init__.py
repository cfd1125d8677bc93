"""The learned stain normaliser of reference 002 (issue 18): networks and losses.

A CycleGAN between many-stain tissue (X) and the lab's reference style (Y) whose generators also
segment nuclei: one encoder, attention-gated skips, a normalisation decoder (RGB) and a
segmentation decoder (mask logit). :class:`AttCycleGenerator` is the teacher,
:class:`TransCycleGenerator` (residual encoder + Transformer bottleneck) the student;
:class:`PatchDiscriminator` judges style; :mod:`.losses` holds the LSGAN, cycle, segmentation
and identity terms and their weighted sums. Needs PyTorch (the ``train`` extra); nothing here is
imported by :mod:`napari_nucleiseg.stain` itself.
"""

from .losses import (
    CyclePass,
    LossWeights,
    cycle_loss,
    cycle_pass,
    discriminator_objective,
    generator_objective,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    segmentation_loss,
)
from .network import (
    AttCycleGenerator,
    AttentionGate,
    BasicBlock,
    PatchDiscriminator,
    TransCycleGenerator,
    TransformerLayer,
    count_parameters,
    sinusoidal_positions_2d,
)

__all__ = [
    "CyclePass",
    "LossWeights",
    "cycle_loss",
    "cycle_pass",
    "discriminator_objective",
    "generator_objective",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
    "segmentation_loss",
    "AttCycleGenerator",
    "AttentionGate",
    "BasicBlock",
    "PatchDiscriminator",
    "TransCycleGenerator",
    "TransformerLayer",
    "count_parameters",
    "sinusoidal_positions_2d",
]
