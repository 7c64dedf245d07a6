"""The node's commands: ``node`` (one node process) and ``peer`` (P2P training)."""
