"""``python -m benchmarks``: every benchmark, one table, written to benchmarks/RESULTS.md."""

from .run import main

main()
