"""Torch-free runtime: load exported artifacts and serve features."""
