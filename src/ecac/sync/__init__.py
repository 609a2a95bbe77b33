"""The sans-I/O sync core: wire messages, response planning, the planner, frames, effects, the coordinator.

Pure like ``ecac.core``: it turns events into effects that the node carries out, and reads the store
only through the monotone ``IndexFacts`` of its live index and the immutable ``StoreSnapshot`` its
writer published (``ecac.core.snapshot``).
"""
