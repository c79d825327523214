"""SALT: compute-efficient video self-supervised learning with frozen teachers."""

__version__ = "0.1.0"
