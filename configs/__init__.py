"""YAML presets shipped with wherevit (loaded by name: ``--config quickstart``)."""
