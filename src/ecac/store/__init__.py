"""Storage adapters: the RocksDB store, the in-memory store, row layouts, audit log files and trust files."""
