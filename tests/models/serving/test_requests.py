"""models/serving/pyfunc.py: a request as the pyfunc may receive it (a DataFrame or a dict of columns)."""

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from models.serving.pyfunc import formula_rows, request_frame


def test_a_dict_request_is_the_same_table_as_its_frame():
    columns = {"formula": ["GaN", None, "NaCl"], "dft_value": [0.5, None, ""]}
    frame = request_frame(columns)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["formula", "dft_value"] and len(frame) == 3
    assert formula_rows(columns) == formula_rows(frame) == ["GaN", "", "NaCl"]
    same = pd.DataFrame(columns)
    assert request_frame(same) is same  # a frame passes through untouched


@pytest.mark.parametrize("columns", [{"formula": ["GaN", "NaCl"], "dft_value": [0.5]}, {"formula": "GaN"}])
def test_columns_that_form_no_table_are_the_request_s_fault(columns):
    with pytest.raises(MlflowException, match="do not form a table") as err:
        formula_rows(columns)
    assert err.value.get_http_status_code() == 400
