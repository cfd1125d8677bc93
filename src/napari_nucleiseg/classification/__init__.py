"""Tissue classification: tumour heatmaps and attention maps learned from a pathologist's
outlines (references 001, 003 and 004 in ``../shared/SEEDS.md``).

``network`` (the multi-task ESP network), ``losses`` (dynamically weighted cross-entropy),
``tiles`` (labelled tiles and pixel-labelled mosaics), ``intermediate`` (reference 004's
pathologist-free pretraining labels), ``train`` (the alternating training loop), ``classifier``
(a trained model on arrays, without torch when its ONNX twin is there).
"""
