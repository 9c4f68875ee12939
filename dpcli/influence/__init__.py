"""Influence estimators: S_i = (1/n) H^-1 grad L(z_i) on the last linear layer, and its sketch."""
