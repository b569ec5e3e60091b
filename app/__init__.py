"""The application layer: the CLI, the quickstart pipeline, bench and the PyTorch reference backend.

It is the only layer allowed to import every other one (train, export, runtime, base).
"""
