"""Selection: the solvers of Eq. 3/4, the epsilon certificate, and the baseline selectors."""
