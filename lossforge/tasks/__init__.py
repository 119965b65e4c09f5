"""Scoring tasks (see ``base`` for the contract and ``registry`` for the names suite files use)."""
