"""Downstream heads on frozen features: depth, segmentation, relative pose."""
