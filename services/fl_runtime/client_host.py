"""Run the FLOps ``ClientApp`` in this process for every message a link delivers.

One ``Context`` per node for the process's life, so the user's ``ModelManager`` and its data stay
loaded across rounds (the ClientApp keeps them). A raising ClientApp is answered with an error
reply naming the exception and the innermost frame in the user's own code.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.app.user_config import UserConfigValue
from flwr.supercore.task_identity import TaskIdentity

from services.fl_runtime.link.grid import RUN_ID

Handler = Callable[[Message], Message]


def client_app_handler(node_config: dict[str, UserConfigValue], node_id: int, *, preload: bool = False) -> Handler:
    """``preload``: load the user's ModelManager and its data now (errors surface here, before joining)."""
    from services.learner.client_app import app, model_manager

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, node_id, RUN_ID
    context = Context(run_id=RUN_ID, node_id=node_id, node_config=dict(node_config), state=RecordDict(), run_config={})
    if preload:
        model_manager(context)

    def handle(message: Message) -> Message:
        return app(message, context)

    return handle


def describe_user_error(error: BaseException, user_dir: str | None) -> str:
    """``ValueError: message at model_manager.py:41`` — the innermost frame in the user's files, if any."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    root = Path(user_dir).resolve() if user_dir else None
    mine = [f for f in frames if root is not None and _under(Path(f.filename), root)]
    if mine:
        frame = mine[-1]
        text += f" at {Path(frame.filename).resolve().relative_to(root)}:{frame.lineno}"  # type: ignore[arg-type]
    return " ".join(text.split())


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True
