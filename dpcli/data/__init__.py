"""Datasets: sources (digits, CIFAR, image folders) in :mod:`dpcli.data.sources`, containers in
:mod:`dpcli.data.base`, the on-disk image cache in :mod:`dpcli.data.cache`, and the batches every
stage reads in :mod:`dpcli.data.batches`."""
