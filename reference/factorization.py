"""Reference factorization (being written)."""
