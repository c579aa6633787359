"""Model adapters: one module per model family (installed as ``dsxai.adapters``).

Each family's library is imported lazily, so ``import dsxai.adapters`` needs only
the core dependencies.
"""
