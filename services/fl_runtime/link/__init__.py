"""FLOps' push link: Flower ``Message``s over one long-lived, mutually authenticated gRPC stream per node.

The aggregator runs a :class:`~services.fl_runtime.link.server.LinkServer` and drives rounds through
:class:`~services.fl_runtime.link.grid.LinkGrid` (a Flower ``Grid``, so Flower strategies and the FLOps
round loop run on it unchanged). Each learner (and each cluster aggregator towards the root) keeps one
:class:`~services.fl_runtime.link.client.LinkClient` stream open and answers every message in-process
with the Flower ``ClientApp``. Why not Flower's SuperLink/SuperNode: see docs/design.md ("Training link").
"""
