"""A toy nuclei method for registry tests: dark pixels, connected components. Registering it
at run time must make it a method in every face without a code change."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_nucleiseg.methods import NucleiMethod


class DarkBlobs(NucleiMethod):
    name = "toy-dark-blobs"
    mpp = 0.5
    tile_px = 512
    context_um = 16.0

    def segment(self, rgb, mpp):
        dark = np.asarray(rgb, np.float32).mean(axis=-1) < 150
        return ndi.label(ndi.binary_opening(dark, iterations=2))[0].astype(np.uint32)
