"""flops-utils: the small library a FLOps user ML repository imports.

A user repo subclasses :class:`ModelManager` and :class:`DataManager` and calls
:func:`load_dataset` to read this node's data; everything else (Flower, MLflow,
MQTT) is injected by the FLOps builder.
"""

from flops_utils.ml_interfaces import DataManager, FitContext, ModelManager

__all__ = ["DataManager", "FitContext", "ModelManager", "load_dataset"]


def __getattr__(name: str) -> object:
    # load_dataset pulls in pyarrow.flight; import it lazily so the interfaces stay light.
    if name == "load_dataset":
        from flops_utils.data_client import load_dataset

        return load_dataset
    raise AttributeError(name)
