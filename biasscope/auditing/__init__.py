"""The audit: runs the measurements over a dataset, aggregates them with intervals, checks the
data, and decides the verdict and its diagnostics.

May import: errors, runtime, results, measuring, io.
"""
