"""Storage adapters: the RocksDB store, the in-memory store, audit log files, trust files."""
