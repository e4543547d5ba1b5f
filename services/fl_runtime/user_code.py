"""Loads the user's ``ModelManager`` from ``model_manager.py`` with one-line errors."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np

from flops_utils.ml_interfaces import REQUIRED_MODEL_METHODS, ModelManager

MODULE_NAME = "model_manager"
CLASS_NAME = "ModelManager"


class UserCodeError(RuntimeError):
    """The user's repository cannot be used; the message is one line."""


def _ensure_importable(app_dir: str | None) -> None:
    # Flower puts the unpacked app (FAB) first on sys.path; app_dir is the fallback.
    if app_dir and Path(app_dir, f"{MODULE_NAME}.py").is_file() and app_dir not in sys.path:
        sys.path.append(app_dir)


def model_manager_class(app_dir: str | None = None) -> type:
    _ensure_importable(app_dir)
    try:
        module = importlib.import_module(MODULE_NAME)
    except ModuleNotFoundError as error:
        if error.name == MODULE_NAME:
            raise UserCodeError(f"no {MODULE_NAME}.py in the repository ({app_dir or 'app'})") from None
        raise UserCodeError(f"{MODULE_NAME}.py cannot be imported: missing module {error.name!r}") from None
    except Exception as error:  # any import-time failure of user code
        raise UserCodeError(f"{MODULE_NAME}.py cannot be imported: {type(error).__name__}: {error}") from None
    cls = getattr(module, CLASS_NAME, None)
    if not isinstance(cls, type):
        raise UserCodeError(f"{MODULE_NAME}.py defines no class {CLASS_NAME}")
    missing = [name for name in REQUIRED_MODEL_METHODS if not callable(getattr(cls, name, None))]
    if missing:
        raise UserCodeError(f"{CLASS_NAME} lacks {', '.join(missing)}")
    return cls


def load_model_manager(app_dir: str | None = None) -> ModelManager:
    """A fresh instance of the user's ``ModelManager`` (no-argument constructor)."""
    cls = model_manager_class(app_dir)
    try:
        instance = cls()
    except Exception as error:
        raise UserCodeError(f"{CLASS_NAME}() failed: {type(error).__name__}: {error}") from None
    return instance  # type: ignore[no-any-return]


def initial_parameters(manager: ModelManager) -> list[np.ndarray]:
    """The model a fresh ``ModelManager`` starts from: the aggregator's first global model (it has no data)."""
    try:
        return list(manager.get_model_parameters())
    except Exception as error:
        raise UserCodeError(
            f"get_model_parameters() failed right after {CLASS_NAME}() ({type(error).__name__}: {error}); "
            f"the aggregator takes the initial model from a fresh {CLASS_NAME} without data, "
            "so create the model's parameters in __init__"
        ) from None


def user_code_dir(app_dir: str | None = None) -> Path:
    """Directory holding the imported ``model_manager.py`` (for MLflow ``code_paths``)."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None and getattr(module, "__file__", None):
        return Path(str(module.__file__)).parent
    if app_dir:
        return Path(app_dir)
    raise UserCodeError(f"{MODULE_NAME} is not loaded")
