"""Side-by-side performance measurements of mltrail, each store's raw driver and MLflow.

Run `python -m benchmarks.run --quick` (a few minutes) or `--full`; see
docs/benchmarks.md for what each figure means and for a recorded run.
"""
