"""Measuring a model: the modality spec (where to perturb), the pure estimators and the bounds'
availability, the output kinds and their divergences, the perturbation engine, its noise and
its downstream-only reuse, the performance checks (permutation, Shapley, shifted data), the
probe and the attributions.

May import: errors, runtime, results.
"""
