"""Benchmarks of pyro-flows against peer libraries (speed and fit).

Run from the repository root, e.g. ``python -m benchmarks.speed --dims 2 16 64``.
Peer libraries come with the ``bench`` extra: ``pip install nflows normflows zuko``.
"""
