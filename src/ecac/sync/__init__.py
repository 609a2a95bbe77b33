"""The sans-I/O sync core: wire messages, response planning, the fetch planner and the per-peer coordinator. Pure like ecac.core: it turns events into effects that the node carries out."""
