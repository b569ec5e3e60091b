"""The torch-free base layer: errors, atomic io, config loading, image preprocessing, the sidecar schema.

Every other layer may import it; it imports none of them (checked by import-linter in the tests).
"""
