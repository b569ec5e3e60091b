"""Export formats: one module per artifact kind."""
