"""Datasets: sources (digits, CIFAR, image folders) and the batches every stage reads."""
