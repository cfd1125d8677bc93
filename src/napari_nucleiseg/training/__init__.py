"""Training: data sets of labelled nuclei, the resumable training loop, checkpoints."""
