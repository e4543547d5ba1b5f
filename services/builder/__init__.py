"""The FLOps builder: turns a user's ML repository into a runnable FL runtime.

Local mode (:func:`services.builder.local.build_local`) clones the repository, checks
the ML repo contract, creates a cached virtualenv with the repository's dependencies
and writes an augmented Flower app next to the user's code. The OCI mode lives in
``services.builder.oci``.
"""
