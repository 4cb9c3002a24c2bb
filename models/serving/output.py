"""The table ``matshift predict`` answers with: one row per input, valid or not, and its terminal form.

:func:`predict_items` runs a :class:`~models.serving.Predictor` on the valid inputs and keeps
every invalid one as a row with its ``error`` and no number, in the order given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from featurizers.inputs import InputProblem, ParsedInput
from models._io import OutputError, write_csv, write_text
from models.serving.predictor import Predictor

COLUMNS = [
    "input",
    "formula",
    "prediction",
    "lower",
    "upper",
    "coverage",
    "unit",
    "bag_spread",
    "metal",
    "metal_probability",
    "metal_threshold",
    "nonmetal_prediction",
    "view",
    "structure_used",
    "dft_value",
    "polymorphs",
    "polymorph_low",
    "polymorph_high",
    "calibrated_dft",
    "ad_score",
    "ad_warning",
    "error",
]


def predict_items(items: Sequence[ParsedInput | InputProblem], predictor: Predictor, *, unit: str,
                  coverage: float | None = None) -> pd.DataFrame:
    """One row per input in order (:data:`COLUMNS`): a prediction for a valid one, its ``error`` for an invalid one.

    A formula that parses but cannot be featurized (an element without Magpie data, such as
    Og), and a user's ``dft_value`` the property cannot take (a negative band gap), are invalid
    inputs too: one bad row never fails the others.
    """
    items = [InputProblem(i.input, i.kind, why) if isinstance(i, ParsedInput) and (why := predictor.bad_dft_value(i))
             else i for i in items]
    valid = [i for i in items if isinstance(i, ParsedInput)]
    refused = predictor.refused(valid) if valid else {}
    if refused:
        items = [InputProblem(i.input, i.kind, refused[i.formula]) if isinstance(i, ParsedInput)
                 and i.formula in refused else i for i in items]
        valid = [i for i in items if isinstance(i, ParsedInput)]
    results = predictor.predict(valid, coverage=coverage) if valid else pd.DataFrame()
    rows = []
    it = iter(results.to_dict("records"))
    for item in items:
        if isinstance(item, InputProblem):
            rows.append({"input": item.input, "unit": unit, "error": item.reason})
            continue
        res = next(it)
        rows.append({"input": item.input, "formula": item.formula, "unit": unit, **res, "error": None})
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[COLUMNS]


def format_table(frame: pd.DataFrame) -> str:
    """Render the terminal table ``matshift predict`` prints (an invalid input's row says its error).

    The interval column is the conformal interval at the nominal coverage (in its header).
    Band-gap rows served with the metal classifier show P(metal); a row called metal shows
    0 eV and its non-metal estimate in the note.
    """
    lines = []
    covs = [c for c in frame.get("coverage", pd.Series(dtype=float)) if _finite(c)]
    span = f"{round(100 * covs[0])}% interval" if covs else "interval"
    header = f"{'input':<24} {'prediction':>12} {span:>17} {'P(metal)':>8} {'view':<11} {'AD':>5}  structure / note"
    lines.append(header)
    lines.append("-" * len(header))
    for row in frame.to_dict("records"):
        shown = _printable(str(row["input"]))[:24]
        if isinstance(row.get("error"), str):  # valid rows hold None (NaN once mixed in a frame)
            lines.append(f"{shown:<24} {'—':>12} {'':>17} {'':>8} {'':<11} {'':>5}  ERROR: {row['error']}")
            continue
        pred = f"{row['prediction']:.3f} {row['unit']}"
        low, high = row.get("lower"), row.get("upper")
        unc = f"[{low:.2f}, {high:.2f}]" if _finite(low) and _finite(high) else ""
        ad = f"{row['ad_score']:.0f}" if _finite(row.get("ad_score")) else ""
        prob = f"{row['metal_probability']:.2f}" if _finite(row.get("metal_probability")) else ""
        note = str(row.get("structure_used") or "")
        if row.get("metal") is True:
            at = f"{row['metal_threshold']:.2f}" if _finite(row.get("metal_threshold")) else "threshold"
            note = (f"METAL (P(metal) >= {at}; non-metal estimate {row['nonmetal_prediction']:.3f} "
                    f"{row['unit']}); " + note)
        if row.get("ad_warning"):
            note += "  WARNING: outside the training domain"
        lines.append(f"{shown:<24} {pred:>12} {unc:>17} {prob:>8} {row['view']!s:<11} {ad:>5}  {note}")
    return "\n".join(lines)


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write the table as ``.json`` (a list of records) or ``.csv``; another suffix is an :class:`OutputError`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        write_text(path, frame.to_json(orient="records", indent=2) + "\n")
    elif suffix == ".csv":
        write_csv(path, frame)
    else:
        raise OutputError(f"--output {path}: use a .csv or .json file name")


def _printable(text: str) -> str:
    """Escape an input with a newline or control character, which would break the table."""
    return text if text.isprintable() else repr(text)[1:-1]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


__all__ = ["COLUMNS", "format_table", "predict_items", "write_table"]
