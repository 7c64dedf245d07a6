"""The registry: the network's lookup table of groups, nodes, performance and models."""
