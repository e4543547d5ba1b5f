"""The ``flops`` command-line client."""
