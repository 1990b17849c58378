"""Primitives every layer shares (argument checks, atomic writes, CSR helpers, the document-id map,
timing). Nothing here imports from the rest of drfast."""
