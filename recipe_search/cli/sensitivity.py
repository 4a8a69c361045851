"""Commands on sensitivity sweeps and the surrogate: sensitivity."""
