"""Audits during training: a monitor for plain loops, a Lightning Callback and a Hugging Face
TrainerCallback that log shares, reliance and verdicts through the trainer's logger.

May import: errors, runtime, results, measuring, io, auditing, render.
"""
