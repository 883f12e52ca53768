"""Per-task hyperparameters of the SB3 algorithms (``<algo>.yml``), shipped as package data."""
