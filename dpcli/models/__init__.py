"""Models: classifiers whose last linear layer (the head) is kept apart from the features."""
