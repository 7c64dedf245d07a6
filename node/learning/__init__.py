"""Learning on one node's data: data sets, partitioners, models, the learner, weights and merges."""
