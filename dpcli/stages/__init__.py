"""The stages over artifacts: what the CLI runs and the Python API exposes."""
