"""Federation inside one group with Flower: the group round, its transports, contributions."""
