"""The pure core: op model, DAG, order, policy, CRDTs, state and digest. No I/O, no clock, no threads, no process-global mutable state (checked by the import contract in pyproject.toml)."""
