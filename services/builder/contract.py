"""Check the ML repository contract: model_manager.py, data_manager.py, a dependency file.

Two passes:

* :func:`check_contract` is static (AST, no import): a missing file, a missing
  ``ModelManager`` class or missing methods fail in milliseconds, before any
  environment is built.
* :func:`probe_model_manager` imports ``model_manager`` with the built environment's
  interpreter in a child process and checks the class really implements every
  method of :data:`flops_utils.ml_interfaces.REQUIRED_MODEL_METHODS` (inherited
  methods, imported classes and import errors are only visible that way), then
  builds ``ModelManager()`` and checks ``get_model_parameters()`` gives numeric
  arrays without data, as the aggregator needs for its initial model.

Every failure is a :class:`BuildError` with one line such as
``model_manager.py: class ModelManager is missing methods fit_model, evaluate_model``.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterator
from pathlib import Path

from flops_utils.message_text import one_line
from flops_utils.ml_interfaces import REQUIRED_MODEL_METHODS
from services.builder.dependencies import DependencySpec, read_dependencies
from services.builder.errors import BuildError
from services.builder.process import run_command

MODEL_FILE = "model_manager.py"
DATA_FILE = "data_manager.py"
CLASS_NAME = "ModelManager"
PROBE_TIMEOUT_S = 300.0
_PROBE_MARK = "FLOPS_PROBE "
_FLOPS_MODULES = ("flops_utils", "flops_utils.ml_interfaces")
_NEUTRAL_BASES = ("object", "ABC", "Generic", "Protocol")


def _fail(reason: str) -> BuildError:
    return BuildError(reason, step="contract")


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking inside if/try/with blocks but not into functions or classes."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.With | ast.For | ast.While):
            yield from _module_statements(node.body + list(getattr(node, "orelse", [])))
        elif isinstance(node, ast.Try):
            blocks = node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                blocks += handler.body
            yield from _module_statements(blocks)


class _ModuleFacts:
    """What model_manager.py binds at module level, as far as the AST tells."""

    def __init__(self, tree: ast.Module) -> None:
        self.classes: dict[str, list[ast.ClassDef]] = {}
        self.flops_names: set[str] = set()  # names bound to flops_utils' abstract ModelManager
        self.other_bindings: set[str] = set()  # names bound by other imports or assignments
        self.flops_modules: set[str] = set()  # names bound to the flops_utils module(s)
        for node in _module_statements(tree.body):
            if isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if node.module in _FLOPS_MODULES and alias.name == CLASS_NAME:
                        self.flops_names.add(bound)
                    else:
                        self.other_bindings.add(bound)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in _FLOPS_MODULES:
                        self.flops_modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                self.other_bindings.update(t.id for t in targets if isinstance(t, ast.Name))

    def is_flops_base(self, base: ast.expr) -> bool:
        if isinstance(base, ast.Name):
            return base.id in self.flops_names
        if isinstance(base, ast.Attribute) and base.attr == CLASS_NAME:
            return ast.unparse(base.value) in self.flops_modules
        return False

    def methods(self, node: ast.ClassDef, seen: frozenset[str] = frozenset()) -> tuple[set[str], bool]:
        """Names ``node`` defines or inherits from classes in this file; False when a base is unknown."""
        names: set[str] = set()
        for statement in node.body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(statement.name)
            elif isinstance(statement, ast.Assign):
                names.update(t.id for t in statement.targets if isinstance(t, ast.Name))
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                names.add(statement.target.id)
        conclusive = True
        for base in node.bases:
            if self.is_flops_base(base) or (isinstance(base, ast.Name) and base.id in _NEUTRAL_BASES):
                continue
            local = self._local_base(base, node, seen)
            if local is None:
                conclusive = False
                continue
            inherited, known = self.methods(local, seen | {node.name})
            names |= inherited
            conclusive = conclusive and known
        return names, conclusive

    def _local_base(self, base: ast.expr, node: ast.ClassDef, seen: frozenset[str]) -> ast.ClassDef | None:
        if not isinstance(base, ast.Name) or base.id in seen or base.id in self.other_bindings:
            return None
        candidates = [c for c in self.classes.get(base.id, []) if c is not node and c.lineno < node.lineno]
        return candidates[-1] if candidates else None


def _read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(f"{path.name}: not UTF-8 text") from None
    except OSError as error:
        raise _fail(f"{path.name}: cannot read ({error.strerror or error})") from None


def _missing_at_root(repo: Path, name: str) -> BuildError:
    """The file is not at the root; a copy in a sub-folder (``src/``) is named, since FLOps reads only the root."""
    nested = sorted(
        path.relative_to(repo).as_posix()
        for pattern in (f"*/{name}", f"*/*/{name}")
        for path in repo.glob(pattern)
        if ".git" not in path.parts
    )
    hint = f" (found {nested[0]}: FLOps reads only the root, move the files there)" if nested else ""
    return _fail(f"{name} is missing at the repository root{hint}")


def check_model_manager_source(path: Path) -> None:
    """Static check of ``model_manager.py``; raises :class:`BuildError` with a one-line reason."""
    if not path.is_file():
        raise _missing_at_root(path.parent, MODEL_FILE)
    try:
        tree = ast.parse(_read_source(path), filename=path.name)
    except SyntaxError as error:
        raise _fail(f"{MODEL_FILE}: syntax error at line {error.lineno}: {error.msg}") from None
    facts = _ModuleFacts(tree)
    definitions = facts.classes.get(CLASS_NAME, [])
    if not definitions:
        if CLASS_NAME in facts.other_bindings:
            return  # bound by an import or assignment we cannot follow statically: the probe decides
        raise _fail(f"{MODEL_FILE}: class {CLASS_NAME} is missing")
    names, conclusive = facts.methods(definitions[-1])
    missing = [name for name in REQUIRED_MODEL_METHODS if name not in names]
    if missing and conclusive:
        raise _fail(f"{MODEL_FILE}: class {CLASS_NAME} is missing methods {', '.join(missing)}")


def check_contract(repo: Path) -> DependencySpec:
    """The fast, static contract check; returns the repository's dependencies when it passes."""
    check_model_manager_source(repo / MODEL_FILE)
    if not (repo / DATA_FILE).is_file():
        raise _missing_at_root(repo, DATA_FILE)
    try:
        return read_dependencies(repo)
    except BuildError as error:
        raise _fail(str(error)) from None


# Runs inside the built environment with the app directory as working directory.
_PROBE_SCRIPT = r"""
import inspect, json, sys

def done(problem=None, **facts):
    print("FLOPS_PROBE " + json.dumps({"problem": problem, **facts}), flush=True)
    sys.exit(0)

try:
    import model_manager
except BaseException as error:
    done(f"model_manager.py: import failed: {type(error).__name__}: {error}")
from flops_utils.ml_interfaces import REQUIRED_MODEL_METHODS, ModelManager as Base
cls = getattr(model_manager, "ModelManager", None)
if cls is None or cls is Base:
    done("model_manager.py: class ModelManager is missing")
if not inspect.isclass(cls):
    done("model_manager.py: ModelManager is not a class")
abstract = set(getattr(cls, "__abstractmethods__", ()) or ())
missing = [m for m in REQUIRED_MODEL_METHODS if m in abstract or not callable(getattr(cls, m, None))]
if missing:
    done("model_manager.py: class ModelManager is missing methods " + ", ".join(missing))
if abstract:
    done("model_manager.py: class ModelManager leaves abstract methods " + ", ".join(sorted(abstract)))
try:
    parameters = inspect.signature(cls).parameters.values()
except (TypeError, ValueError):
    parameters = []
required = [p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
if required:
    done("model_manager.py: ModelManager() must take no arguments (it requires " + ", ".join(required) + ")")
# The aggregator never loads data: it takes the initial model from a fresh ModelManager().
try:
    manager = cls()
except Exception as error:
    done(f"model_manager.py: ModelManager() failed: {type(error).__name__}: {error}")
try:
    arrays = manager.get_model_parameters()
except Exception as error:
    done(
        f"model_manager.py: get_model_parameters() failed right after ModelManager() "
        f"({type(error).__name__}: {error}); the aggregator takes the initial model from a fresh ModelManager "
        "without data, so create the model's parameters in __init__"
    )
import numpy
if not isinstance(arrays, (list, tuple)) or not arrays:
    done(
        "model_manager.py: get_model_parameters() must return a non-empty list of numpy arrays; "
        f"it returned {type(arrays).__name__}"
    )
for index, array in enumerate(arrays):
    try:
        kind = numpy.asarray(array).dtype
    except Exception:
        kind = None
    if kind is None or kind.kind not in "biuf":
        what = f"{type(array).__name__} of dtype {kind}" if kind is not None else type(array).__name__
        done(
            f"model_manager.py: get_model_parameters() item {index} is {what}; "
            "every parameter must be a numpy array of numbers"
        )
done(None, subclass=issubclass(cls, Base))
"""


def probe_model_manager(python: Path, app_dir: Path, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Import the user's ModelManager with ``python`` in ``app_dir`` and check it.

    Returns whether the class subclasses ``flops_utils.ModelManager`` (duck typing is
    accepted); raises :class:`BuildError` with a one-line reason otherwise.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    outcome = run_command([str(python), "-c", _PROBE_SCRIPT], timeout=timeout, cwd=app_dir, env=env)
    if outcome.timed_out:
        raise BuildError(f"{MODEL_FILE}: importing ModelManager took longer than {timeout:g} s", step="verify")
    for line in reversed(outcome.stdout.splitlines()):
        if line.startswith(_PROBE_MARK):
            result = json.loads(line[len(_PROBE_MARK) :])
            if result["problem"]:
                raise BuildError(one_line(result["problem"]), step="verify")
            return bool(result.get("subclass"))
    reason = one_line(outcome.stderr.strip().splitlines()[-1] if outcome.stderr.strip() else "no output", 300)
    raise BuildError(f"{MODEL_FILE}: the environment could not run the contract probe ({reason})", step="verify")
