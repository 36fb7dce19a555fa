"""Benchmarks with their own commands, each a module run from the repository root:

    python -m bench.<name> [options]          e.g. python -m bench.contrastive_memory --sizes 4096 16384

Shared helpers are modules here, imported as `bench.<module>`: benchmarks_doc.py (a benchmark's section
of docs/benchmarks.md) and old_code.py (an earlier version of a library module, from git history).
"""
