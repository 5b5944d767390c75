"""Reference symmetry (being written)."""
