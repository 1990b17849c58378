"""Integrations of drfast into other training libraries (the top layer, beside ``pipelines``).

Each integration lives in its own module and imports its library only there, so ``import drfast`` never
imports sentence-transformers: ``from drfast.integrations.sentence_transformers import mine_hard_negatives``.
Nothing inside drfast imports this package.
"""
