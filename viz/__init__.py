"""Visualization of the network from registry snapshots."""
