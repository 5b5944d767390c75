"""Reference hashing (being written)."""
