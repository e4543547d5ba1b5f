"""The ML repo contract: static checks (fast, exact one-line reasons) and the import probe."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from services.builder.contract import check_contract, probe_model_manager
from services.builder.dependencies import read_dependencies
from services.builder.errors import BuildError
from tests.example_repos import EXAMPLES_DIR


def _copy_example(name: str, tmp_path: Path) -> Path:
    destination = tmp_path / name
    shutil.copytree(EXAMPLES_DIR / name, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def _reason(repo: Path) -> str:
    with pytest.raises(BuildError) as caught:
        check_contract(repo)
    reason = str(caught.value)
    assert "\n" not in reason
    return reason


def test_the_examples_pass_the_static_check(tmp_path: Path) -> None:
    assert check_contract(EXAMPLES_DIR / "sklearn_digits").requirements == ("numpy", "scikit-learn>=1.4")
    assert check_contract(EXAMPLES_DIR / "pytorch_digits").requirements == ("numpy", "torch==2.13.0")
    keras = check_contract(EXAMPLES_DIR / "keras_digits")
    assert (keras.file, keras.requirements) == ("pyproject.toml", ("keras>=3", "torch==2.13.0"))


def test_missing_model_manager_file_fails_fast(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "model_manager.py").unlink()
    started = time.monotonic()
    assert _reason(repo) == "model_manager.py is missing at the repository root"
    assert time.monotonic() - started < 1.0


def test_files_in_a_sub_folder_are_named(tmp_path: Path) -> None:
    """A newcomer's repo with its code under src/: the reason says where the file is and what to do."""
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "src").mkdir()
    (repo / "model_manager.py").rename(repo / "src" / "model_manager.py")
    assert _reason(repo) == (
        "model_manager.py is missing at the repository root (found src/model_manager.py: FLOps reads only the root, "
        "move the files there)"
    )
    (repo / "src" / "model_manager.py").rename(repo / "model_manager.py")
    (repo / "data_manager.py").rename(repo / "src" / "data_manager.py")
    assert _reason(repo).startswith("data_manager.py is missing at the repository root (found src/data_manager.py")


def test_missing_class(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "model_manager.py").write_text("from flops_utils import ModelManager\n\nclass Model:\n    pass\n")
    assert _reason(repo) == "model_manager.py: class ModelManager is missing"


def test_missing_methods_are_named_in_interface_order(tmp_path: Path) -> None:
    started = time.monotonic()
    assert _reason(EXAMPLES_DIR / "broken_contract") == (
        "model_manager.py: class ModelManager is missing methods fit_model, evaluate_model"
    )
    assert time.monotonic() - started < 1.0


def test_methods_inherited_from_a_class_in_the_same_file_count(tmp_path: Path) -> None:
    repo = _copy_example("broken_contract", tmp_path)
    source = (repo / "model_manager.py").read_text()
    source = source.replace("class ModelManager(BaseModelManager):", "class Trainer(BaseModelManager):")
    source += (
        "\n\nclass ModelManager(Trainer):\n"
        "    def fit_model(self) -> int:\n        return 0\n"
        "    evaluate_model = fit_model\n"
    )
    (repo / "model_manager.py").write_text(source)
    assert check_contract(repo).file == "requirements.txt"


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "model_manager.py").write_text("class ModelManager(:\n    pass\n")
    assert _reason(repo).startswith("model_manager.py: syntax error at line 1: ")


def test_missing_data_manager(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "data_manager.py").unlink()
    assert _reason(repo) == "data_manager.py is missing at the repository root"


def test_missing_dependency_file(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "requirements.txt").unlink()
    assert _reason(repo) == (
        "no dependency file: add one of conda.yaml, conda.yml, requirements.txt, pyproject.toml at the repository root"
    )


def test_unreadable_dependency_files(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "requirements.txt").write_bytes(b"scikit-learn\n\xff\xfe\x00garbage\n")
    assert _reason(repo) == "requirements.txt: unreadable dependency file (not UTF-8 text)"

    (repo / "requirements.txt").write_text("scikit-learn\n-e git+https://example.invalid/x.git\n")
    assert _reason(repo) == "requirements.txt line 2: pip options such as '-e' are not supported"

    (repo / "requirements.txt").write_text("numpy\nscikit learn ==1\n")
    assert _reason(repo).startswith("requirements.txt line 2: invalid requirement 'scikit learn ==1' (")

    (repo / "requirements.txt").unlink()
    (repo / "conda.yaml").write_text("name: broken\ndependencies:\n  - pip:\n    - numpy\n  bad: [\n")
    assert _reason(repo).startswith("conda.yaml: unreadable dependency file (invalid YAML at line ")

    (repo / "conda.yaml").unlink()
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["numpy"\n')
    assert _reason(repo).startswith("pyproject.toml: unreadable dependency file (invalid TOML: ")


def test_dependency_lists_are_normalised(tmp_path: Path) -> None:
    (tmp_path / "conda.yaml").write_text(
        "dependencies:\n"
        "  - python=3.11\n  - pip\n  - conda-forge::pytorch>=2\n  - numpy=2.4\n  - cpuonly\n"
        "  - pip:\n      - Scikit_Learn >= 1.4\n"
    )
    assert read_dependencies(tmp_path).requirements == ("numpy==2.4.*", "scikit-learn>=1.4", "torch>=2")
    (tmp_path / "conda.yaml").unlink()
    (tmp_path / "requirements.txt").write_text("# comment\nscikit_learn>=1.4  # inline\n\nNumPy\nnumpy\n")
    assert read_dependencies(tmp_path).requirements == ("numpy", "scikit-learn>=1.4")
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")  # not a [project]: ignored
    (tmp_path / "requirements.txt").unlink()
    with pytest.raises(BuildError, match="^no dependency file"):
        read_dependencies(tmp_path)


def _probe_reason(repo: Path) -> str:
    with pytest.raises(BuildError) as caught:
        probe_model_manager(Path(sys.executable), repo, timeout=120)
    reason = str(caught.value)
    assert "\n" not in reason
    return reason


def test_probe_finds_what_the_static_check_cannot_see(tmp_path: Path) -> None:
    repo = _copy_example("broken_contract", tmp_path)
    # The class comes from another module: statically inconclusive, so the probe must decide.
    (repo / "half_manager.py").write_text(
        "class Half:\n    def set_model_data(self): ...\n    def get_model(self): ...\n"
    )
    (repo / "model_manager.py").write_text(
        "from half_manager import Half\n\nclass ModelManager(Half):\n    def fit_model(self): ...\n"
    )
    check_contract(repo)
    assert _probe_reason(repo) == (
        "model_manager.py: class ModelManager is missing methods get_model_parameters, set_model_parameters, "
        "evaluate_model"
    )

    (repo / "model_manager.py").write_text("import not_an_installed_package\n\nclass ModelManager:\n    pass\n")
    assert _probe_reason(repo) == (
        "model_manager.py: import failed: ModuleNotFoundError: No module named 'not_an_installed_package'"
    )


def test_probe_accepts_the_broken_example_only_after_it_is_fixed(tmp_path: Path) -> None:
    repo = _copy_example("broken_contract", tmp_path)
    assert _probe_reason(repo) == "model_manager.py: class ModelManager is missing methods fit_model, evaluate_model"
    source = (repo / "model_manager.py").read_text()
    (repo / "model_manager.py").write_text(
        source + "\n    def fit_model(self) -> int:\n        return 0\n\n"
        "    def evaluate_model(self) -> tuple[float, float, int]:\n        return 0.0, 0.0, 0\n"
    )
    assert probe_model_manager(Path(sys.executable), repo, timeout=120) is True


UNFITTED_MLP = """
from flops_utils import ModelManager as Base
from sklearn.neural_network import MLPClassifier


class ModelManager(Base):
    def __init__(self):
        self.model = MLPClassifier(hidden_layer_sizes=(4,))

    def set_model_data(self): ...
    def get_model(self): return self.model
    def get_model_parameters(self): return [*self.model.coefs_, *self.model.intercepts_]
    def set_model_parameters(self, parameters): ...
    def fit_model(self): return 0
    def evaluate_model(self): return 0.0, 0.0, 0
"""


def test_probe_needs_parameters_before_any_data(tmp_path: Path) -> None:
    """A newcomer's unfitted scikit-learn model: the aggregator would fail in round 0 with an AttributeError;
    the build refuses it with the reason and the remedy instead."""
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "model_manager.py").write_text(UNFITTED_MLP)
    check_contract(repo)
    assert _probe_reason(repo) == (
        "model_manager.py: get_model_parameters() failed right after ModelManager() (AttributeError: "
        "'MLPClassifier' object has no attribute 'coefs_'); the aggregator takes the initial model from a fresh "
        "ModelManager without data, so create the model's parameters in __init__"
    )

    (repo / "model_manager.py").write_text(UNFITTED_MLP.replace("[*self.model.coefs_, *self.model.intercepts_]", "{}"))
    assert _probe_reason(repo) == (
        "model_manager.py: get_model_parameters() must return a non-empty list of numpy arrays; it returned dict"
    )
    (repo / "model_manager.py").write_text(
        UNFITTED_MLP.replace("[*self.model.coefs_, *self.model.intercepts_]", "[__import__('numpy').zeros(2), 'w']")
    )
    assert _probe_reason(repo) == (
        "model_manager.py: get_model_parameters() item 1 is str of dtype <U1; "
        "every parameter must be a numpy array of numbers"
    )
    (repo / "model_manager.py").write_text(UNFITTED_MLP.replace("MLPClassifier(hidden_layer_sizes=(4,))", "1 / 0"))
    assert _probe_reason(repo) == "model_manager.py: ModelManager() failed: ZeroDivisionError: division by zero"


def test_probe_accepts_float64_and_int_parameters(tmp_path: Path) -> None:
    repo = _copy_example("sklearn_digits", tmp_path)
    (repo / "model_manager.py").write_text(
        UNFITTED_MLP.replace(
            "[*self.model.coefs_, *self.model.intercepts_]",
            "[__import__('numpy').zeros((3, 2)), __import__('numpy').arange(3), [0.5, 1.5]]",
        )
    )
    assert probe_model_manager(Path(sys.executable), repo, timeout=120) is True


def test_the_aggregator_names_the_remedy_when_a_repo_skipped_the_probe() -> None:
    """Images built elsewhere skip the builder's probe: the aggregator's own failure says the same."""
    from services.fl_runtime.user_code import UserCodeError, initial_parameters

    class Unfitted:
        def get_model_parameters(self) -> list[object]:
            raise AttributeError("'MLPClassifier' object has no attribute 'coefs_'")

    with pytest.raises(UserCodeError) as caught:
        initial_parameters(Unfitted())  # type: ignore[arg-type]
    assert str(caught.value) == (
        "get_model_parameters() failed right after ModelManager() (AttributeError: 'MLPClassifier' object has no "
        "attribute 'coefs_'); the aggregator takes the initial model from a fresh ModelManager without data, "
        "so create the model's parameters in __init__"
    )
