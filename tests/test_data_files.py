"""Users' data files into fragments: CSV with a label column, Parquet (plain or fragment schema), .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flops_utils.data_client import from_numpy, to_numpy
from flops_utils.data_files import DataFileError, read_data_file


def test_csv_with_a_named_label_column(tmp_path: Path) -> None:
    path = tmp_path / "readings.csv"
    path.write_text("temp,humidity,state\n20.5,0.3,1\n21.0,0.4,0\n19.5,0.5,2\n")
    x, y = to_numpy(read_data_file(path, "state"))
    np.testing.assert_allclose(x, [[20.5, 0.3], [21.0, 0.4], [19.5, 0.5]], rtol=1e-6)
    assert y.tolist() == [1, 0, 2]
    with pytest.raises(DataFileError, match=r"has no label column 'label' \(columns: temp, humidity, state\)"):
        read_data_file(path)


def test_parquet_plain_columns_and_fragment_schema(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3, 4], "label": [0, 1]}), plain)
    x, y = to_numpy(read_data_file(plain))
    assert x.tolist() == [[1.0, 3.0], [2.0, 4.0]] and y.tolist() == [0, 1]
    fragment = tmp_path / "fragment.parquet"
    pq.write_table(from_numpy(np.ones((3, 5)), [1, 2, 3]), fragment)
    assert to_numpy(read_data_file(fragment))[0].shape == (3, 5)


def test_npz_and_clear_refusals(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 3)), y=np.arange(4))
    assert read_data_file(good).num_rows == 4
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.zeros((4, 3)))
    with pytest.raises(DataFileError, match="must hold arrays 'x' \\(n, d\\) and 'y' \\(n,\\); it has features"):
        read_data_file(wrong)
    text = tmp_path / "text.csv"
    text.write_text("city,label\nMunich,1\n")
    with pytest.raises(DataFileError, match="feature column 'city' holds string, not numbers"):
        read_data_file(text)
    fractions = tmp_path / "fractions.csv"
    fractions.write_text("a,label\n1,0.5\n")
    with pytest.raises(DataFileError, match="label column 'label' holds fractions"):
        read_data_file(fractions)
    with pytest.raises(DataFileError, match="unknown file type '.xlsx'"):
        read_data_file(tmp_path / "sheet.xlsx")


def test_text_labels_and_regression_targets_are_refused_with_the_remedy(tmp_path: Path) -> None:
    """A newcomer's wine CSV with class names, and a regression target: both named, neither stored cut down."""
    names = tmp_path / "wine.csv"
    names.write_text("alcohol,ash,cultivar\n14.2,2.4,barolo\n13.2,2.1,grignolino\n12.4,2.6,barbera\n14.1,2.3,barolo\n")
    with pytest.raises(DataFileError) as caught:
        read_data_file(names, "cultivar")
    assert str(caught.value) == (
        f"{names}: label column 'cultivar' holds text ('barbera', 'barolo', 'grignolino'); labels are integer "
        "classes: map the 3 classes to 0..2 the same way on every node before pushing"
    )
    regression = tmp_path / "diabetes.csv"
    regression.write_text("age,bmi,progression\n0.03,0.06,151.5\n-0.01,-0.05,75.0\n")
    with pytest.raises(DataFileError) as caught:
        read_data_file(regression, "progression")
    assert str(caught.value) == (
        f"{regression}: label column 'progression' holds fractions; labels are integer classes "
        "(FLOps trains classifiers, not regression)"
    )
    # .npz and the device uploader took any y and cut 151.5 to 151 without a word.
    arrays = tmp_path / "diabetes.npz"
    np.savez(arrays, x=np.zeros((2, 2)), y=np.array([151.5, 75.0]))
    with pytest.raises(
        DataFileError, match=r"y holds fractions; labels are integer classes \(FLOps trains classifiers"
    ):
        read_data_file(arrays)
    with pytest.raises(ValueError, match="y holds text values, not integer class labels"):
        from_numpy(np.zeros((2, 2)), np.array(["barolo", "barbera"]))
    assert to_numpy(from_numpy(np.zeros((2, 2)), np.array([2.0, 0.0])))[1].tolist() == [2, 0]  # whole floats pass


def test_a_pandas_row_index_is_not_taken_as_a_feature(tmp_path: Path) -> None:
    """DataFrame.to_csv writes the index as a nameless first column: it was stored as one more feature."""
    path = tmp_path / "wine.csv"
    path.write_text(",alcohol,ash,target\n0,14.2,2.4,0\n1,13.2,2.1,1\n")
    with pytest.raises(DataFileError) as caught:
        read_data_file(path, "target")
    assert str(caught.value) == (
        f"{path}: a column has no name (''), most likely a row index pandas wrote; it would be trained on as a "
        "feature: save with to_csv(..., index=False) or drop it"
    )
    parquet = tmp_path / "wine.parquet"
    pq.write_table(pa.table({"Unnamed: 0": [0, 1], "alcohol": [14.2, 13.2], "label": [0, 1]}), parquet)
    with pytest.raises(DataFileError, match=r"a column has no name \('Unnamed: 0'\)"):
        read_data_file(parquet)
    path.write_text("alcohol,ash,target\n14.2,2.4,0\n13.2,2.1,1\n")
    assert to_numpy(read_data_file(path, "target"))[0].shape == (2, 2)
