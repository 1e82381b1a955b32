"""Files and models: the save formats, model and data loading, data sources, presets, how a model
is called (``--call``, adapters, default modalities), the layer listing.

May import: errors, runtime, results, measuring.
"""
