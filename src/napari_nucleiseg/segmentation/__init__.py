"""Nuclei instance segmentation: a classical floor and learned CPU models behind one interface."""
