"""The `mlmlab` terminal app. Importing this package imports nothing heavy (no torch, no store)."""
