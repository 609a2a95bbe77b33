"""The pure core: op model, DAG, total order, policy, CRDTs, state and digest.

No I/O, no clock, no threads, no process-global mutable state; the import contract in
pyproject.toml checks it.
"""
