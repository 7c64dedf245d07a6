"""Scenario scripts of `scenario NAME` (package data: NAME.sim, one per network)."""
