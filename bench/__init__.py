"""Benchmarks of the engagement-events functions and their database; run `scripts/bench.sh NAME`.

Each benchmark module has ``run(args) -> dict`` (its figures) and may have
``add_arguments(parser)`` for its own flags; ``bench.__main__`` dispatches by name.
"""
