"""Scaling laws: FLOP accounting, published laws, compute-optimal planning, sweeps and fits."""
