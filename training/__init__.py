"""Offline side: import, demo world, features, training, evaluation, experiments."""
