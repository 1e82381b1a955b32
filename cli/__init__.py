"""The ``biasscope`` command line (installed as ``biasscope.cli``)."""
