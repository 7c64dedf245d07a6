"""What drives a node: the pure group policy, the agent, the in-process network, a node process."""
