"""Artifacts: atomic, self-describing HDF5 files and the configuration-keyed run directories."""
