"""Data: image sources, generated scenes, and crop sampling that tracks boxes."""
