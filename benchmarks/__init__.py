"""Benchmarks of mts-faces against the local emulator: ``python -m benchmarks`` runs them all."""
