"""What every layer runs on: the options (``AuditOptions``, ``FixOptions``, profiles), devices,
distributed ranks, batches and model calls, atomic files, text safe for a terminal.

May import: errors.
"""
