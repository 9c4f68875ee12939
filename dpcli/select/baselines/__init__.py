"""The published selectors, one module each, registered by name."""
