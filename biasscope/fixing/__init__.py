"""Fixing a model: the functional-entropy regularizer and its calibration, ModDrop, the trainer
and its guard, checkpoints, DDP, the output folder it writes.

May import: errors, runtime, results, measuring, io, auditing.
"""
