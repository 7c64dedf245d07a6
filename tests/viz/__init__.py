"""Tests of the visualization: snapshots, layout, drawing, export, the viz command."""
