"""The selectors behind ``prune --method``: one module per selector, registered by name (see ``select.base``)."""
