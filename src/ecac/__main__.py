"""``python -m ecac`` runs the CLI (used by benchmarks and tests that need a fresh interpreter)."""

from ecac.cli import main

main()
