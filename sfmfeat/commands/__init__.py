"""CLI verbs. Each module defines ``register(subparsers)``; see ``sfmfeat.cli``."""
