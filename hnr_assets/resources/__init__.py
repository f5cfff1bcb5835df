"""ConfigurableResources: storage, dataset sources, and (per stage) the external systems."""
