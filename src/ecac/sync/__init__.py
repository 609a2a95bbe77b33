"""The sans-I/O sync core: wire messages, response planning, the fetch planner, the coordinator.

Pure like ``ecac.core``: it turns events into effects that the node carries out.
"""
