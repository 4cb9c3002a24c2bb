"""What a stage reads of another stage's fitted models: the surrogate stage's DFT surrogate, the pretrain stage's encoders.

Kept out of :mod:`pipeline.readers` (the data tables every stage reads, LightGBM-free) and out
of the stages themselves (no stage imports another).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError
from pipeline.errors import MissingInputError

log = logging.getLogger(__name__)

__all__ = ["check_correction_terms", "read_pretrained", "read_surrogate"]


def read_surrogate(directory: Path) -> Any:
    """Return the surrogate stage's DFT surrogate in ``directory`` (``data/surrogates/<property>/``), or None without one.

    Its consumers (train, evaluate, metal) check that it is the one they would fit before using it.
    An altered or unreadable one is a :class:`~pipeline.errors.MissingInputError` naming it.
    """
    # LightGBM: only when a surrogate is read
    from models.learners import load_surrogate

    return _read_output(directory, "surrogate.json", load_surrogate, what="DFT surrogate", stage="surrogate",
                        absent="no shared DFT surrogate", instead="the stacked models fit their own")


def read_pretrained(directory: Path) -> Any:
    """Return the pretrain stage's DFT-pretrained encoders in ``directory`` (``data/pretrained/<property>/``), or None.

    Its readers (train, evaluate) check that they are the ones they would pretrain before using them. Altered or
    unreadable ones are a :class:`~pipeline.errors.MissingInputError` naming them.
    """
    # torch: only when the encoders are read
    from models.learners import load_pretrained

    return _read_output(directory, "pretrained.json", load_pretrained, what="pretrained encoders", stage="pretrain",
                        absent="no pretrained encoders", instead="they are pretrained here instead")


def _read_output(directory: Path, header: str, load: Callable[[Path], Any], *, what: str, stage: str, absent: str,
                 instead: str) -> Any:
    """``load(directory)``, None (logged) without ``header`` there; an unreadable one names ``stage`` to rerun."""
    if not (directory / header).exists():
        log.info("%s at %s (`matshift %s`, dvc repro): %s", absent, directory, stage, instead)
        return None
    try:
        return load(directory)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise MissingInputError(f"cannot read the {what} at {directory}: {exc}; rerun `matshift {stage} "
                                f"--property {directory.name}` (dvc repro)") from exc


def check_correction_terms(config: Any, descriptors: Any, prop: str) -> None:
    """Refuse, before any fitting, ``train.stack.correction_terms`` naming a column the stacked model will not have.

    ``config``: the property's :class:`models.learners.StackConfig` (None: no stacked model);
    ``descriptors``: the featurize stage's descriptor table.
    """
    if config is None:
        return
    numeric = descriptors.drop(columns="formula", errors="ignore").select_dtypes(include="number").columns
    missing = config.missing_terms(list(numeric))
    if missing:
        hint = "" if config.bonding else f", or add {prop} to train.stack.bonding for the bonding columns"
        raise ConfigError(f"train.stack.correction_terms.{prop}: no feature column {missing[0]!r} (the descriptor "
                          f"columns of data/features/descriptors.parquet, e.g. {numeric[0]!r}{hint})")
