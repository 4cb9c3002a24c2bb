"""The inputs of ``matshift predict``: formulas, CIF paths and a CSV of them, validated one by one.

A bad input becomes an :class:`~featurizers.inputs.InputProblem` (its row in the answer says
why); only a file that cannot be read at all is a :class:`~pipeline.errors.MatshiftError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from featurizers.inputs import InputProblem, ParsedInput, parse_cif, parse_dft_value, parse_formula_input
from pipeline.errors import MatshiftError

__all__ = ["collect_inputs", "read_input_csv"]


def read_input_csv(path: Path, *, max_sites: int) -> list[ParsedInput | InputProblem]:
    """Read a CSV of formulas and/or CIF paths; a missing or malformed file is an error."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise MatshiftError(f"input file {path} does not exist") from exc
    # pandas' parser errors and UnicodeDecodeError are ValueErrors: they are caught before the generic branch
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MatshiftError(f"input file {path} is not a readable CSV: {exc}") from exc
    except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the name: a message, not a traceback
        raise MatshiftError(f"input file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    columns = {c.strip().lower(): c for c in frame.columns}
    if "formula" not in columns and "cif" not in columns:
        raise MatshiftError(f"input file {path} needs a 'formula' or 'cif' column; it has {list(frame.columns)}")
    items: list[ParsedInput | InputProblem] = []
    for _, row in frame.iterrows():
        cif = row[columns["cif"]].strip() if "cif" in columns else ""
        formula = row[columns["formula"]] if "formula" in columns else ""
        item = (parse_cif(Path(cif) if Path(cif).is_absolute() else path.parent / cif, max_sites=max_sites) if cif
                else parse_formula_input(formula))
        items.append(parse_dft_value(item, row[columns["dft_value"]]) if "dft_value" in columns else item)
    return items


def collect_inputs(
    formulas: Iterable[str] = (), cifs: Iterable[Path | str] = (), *, max_sites: int = 500
) -> list[ParsedInput | InputProblem]:
    """Validate formulas and CIF paths in the order given."""
    items: list[ParsedInput | InputProblem] = [parse_formula_input(f) for f in formulas]
    items += [parse_cif(Path(c), max_sites=max_sites) for c in cifs]
    return items
