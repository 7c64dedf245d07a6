"""HTTP layer of the registry: dependencies and one router per resource."""
