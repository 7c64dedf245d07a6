"""A participant of the network: data, learner, federation, policy and runtime."""
