"""Interactive step-by-step simulator of a Mycelium network."""
