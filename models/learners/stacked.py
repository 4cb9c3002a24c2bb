"""Multi-fidelity stacking: a DFT surrogate feeds a gradient-boosted model of the measurements.

Why: only a minority of measured formulas have a DFT entry (about 16% of the band gaps, 68%
of the enthalpies), so a model that uses the DFT value only where it is known wastes the
~48k DFT labels for everything else. :class:`DFTSurrogate` learns the DFT property from
composition descriptors on the DFT labels alone (no measurement is involved, so it can be
shared by cross-validation folds) and predicts it for every formula. :class:`StackedModel`
then fits gradient boosting (LightGBM) on the descriptors plus four multi-fidelity columns:
the surrogate's estimate, the known DFT value (NaN where none: LightGBM routes missing
values), a has-DFT flag and the best DFT estimate (known value, else surrogate).

Fitted elemental correction: DFT errors against experiment are largely additive per element
(the idea behind fitted elemental-phase reference energies for formation enthalpies), which
trees approximate poorly. So a ridge regression on element fractions first fits the
measurement minus the best DFT estimate on the training rows; the boosters then learn what
is left (``y - corrected``, with ``corrected`` also given as a feature) and the corrected
estimate is added back. Elements unseen in training contribute nothing to the correction.
``config.correction_terms`` (chosen per property) adds linear terms that do transfer: named
feature columns (e.g. the ionic character of :mod:`featurizers.bonding`), z-scored on the
training rows and clipped to their range, so a family absent from training (a halide when no
halide was measured) still gets the correction its bonding implies. ``config.correction_classes``
adds the atomic fraction of named element classes, unscaled like the element fractions: one
offset shared by the class, which an element of it training never saw inherits (the oxides,
held out, get the error the fluorides and chlorides show of a diatomic-gas reference).

Extrapolation (``config.extrapolate``, chosen per property): trees predict a constant beyond
the targets they were fitted on, so a model fitted on gaps up to 4 eV calls a 10 eV insulator
about 4 eV even when its DFT value says otherwise. Three things keep the DFT trend there. The
corrected estimate gets a calibration line whose slope is the reduced major axis of
measurement against it (sd ratio; a least-squares slope shrinks when the measured range is
cut, this one much less). Optionally (``config.monotone``, LightGBM monotone constraints) the
boosters' residual is non-decreasing in every DFT-valued column, so the prediction never falls
as the DFT value rises. Beyond the central 96% of the training targets, a booster's pull back toward that
range is faded out linearly over one standard deviation of the targets, so the prediction
follows the calibrated trend there (a push outward is kept, which keeps the prediction monotone).

Chemistry that transfers (``config.bonding``, chosen per property): the boosters also see the
element-class fractions, valence-electron count, charge balance and ionic character of
:mod:`featurizers.bonding`, after the descriptors. Elements (``config.element_value``): a
formula of one element is predicted the value it has by definition (formation enthalpy 0 of an
element in its reference state), with no spread; trees fitted on compounds alone would not
know it.

The surrogate is *cross-fitted*: for a formula in the DFT training set the feature is the
prediction of the surrogate fitted on the other folds, so a covered formula's feature is an
out-of-sample estimate exactly like an uncovered formula's (otherwise the feature would be a
near copy of the known value on covered rows and the model would learn a wrong trust in it).

Both classes follow the scikit-learn shape (options in ``__init__``, ``fit`` returns ``self``,
fitted state ends in ``_``) and take frames keyed by ``formula``; bad input raises
``ValueError`` with a message, never a silent NaN prediction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featurizers.bonding import (
    BONDING_COLUMNS,
    IONIC_COLUMNS,
    bonding_descriptors,
    class_fractions,
    ionic_descriptors,
)
from featurizers.chemistry import element_fractions, element_mask
from models._io import read_header, write_header
from models.learners.config import StackConfig
from models.learners.shift_field import ShiftField, descriptor_rows
from models.parallel import fork_map
from models.progress import bar

log = logging.getLogger(__name__)

__all__ = [
    "SURROGATE_FIELDS",
    "DFTSurrogate",
    "StackedModel",
    "descriptor_matrix",
    "load_stacked",
    "load_surrogate",
    "reuse_surrogate",
    "save_stacked",
    "save_surrogate",
    "surrogate_from_state",
    "surrogate_state",
]

#: The :class:`StackConfig` fields a fitted :class:`DFTSurrogate` depends on (``n_jobs`` sets only its threads).
SURROGATE_FIELDS = ("surrogate_trees", "surrogate_leaves", "surrogate_lr", "surrogate_folds", "surrogate_max_bin",
                    "surrogate_colsample", "surrogate_bonding", "subsample", "seed")


def descriptor_matrix(descriptors: pd.DataFrame, formulas: Sequence[str], columns: Sequence[str] | None = None) -> np.ndarray:
    """Numeric descriptor rows for ``formulas`` (float32), in the order given; raises on unknown formulas or NaN."""
    d = descriptor_rows(descriptors, formulas)
    cols = list(columns) if columns is not None else list(d.select_dtypes(include="number").columns)
    missing = sorted(set(formulas) - set(d.index))
    if missing:
        raise ValueError(f"no descriptors for {len(missing)} formulas, e.g. {missing[0]!r}")
    x = d.loc[list(formulas), cols].to_numpy(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("descriptors hold NaN or inf")
    return x


def _bonding_block(formulas: list[str], *, workers: int = 1) -> np.ndarray:
    """Return the bonding and ionic descriptors of ``formulas`` (:mod:`featurizers.bonding`), bonding columns first.

    ``workers`` > 1: the formulas in that many contiguous chunks, one per forked process (the
    same rows; matminer's oxidation-state guesses take about 0.3 ms per formula).
    """
    def block(part: list[str]) -> np.ndarray:
        return np.column_stack([bonding_descriptors(part).to_numpy(float), ionic_descriptors(part).to_numpy(float)])

    if workers <= 1 or len(formulas) < 2 * workers:
        return block(formulas)
    step = -(-len(formulas) // workers)
    return np.vstack(list(fork_map(block, [formulas[i:i + step] for i in range(0, len(formulas), step)],
                                   workers=workers)))


def _booster(config: StackConfig, *, trees: int, leaves: int, lr: float, seed: int, max_bin: int, colsample: float,
             objective: str = "regression", min_child_samples: int = 20):
    # LightGBM: only when a booster is fitted or loaded
    import lightgbm as lgb

    # Huber's transition (LightGBM's `alpha`): a setting of Huber alone; other objectives read `alpha` otherwise
    extra = {"alpha": config.huber_delta} if objective == "huber" else {}
    return lgb.LGBMRegressor(
        objective=objective, **extra, n_estimators=trees, num_leaves=leaves, learning_rate=lr, subsample=config.subsample,
        subsample_freq=1, colsample_bytree=colsample, min_child_samples=min_child_samples,
        max_bin=max_bin, random_state=seed, n_jobs=config.n_jobs, verbose=-1,
    )


def _fit_on(model, x: np.ndarray, y: np.ndarray, client: Any):
    """Fit ``model`` (an ``LGBMRegressor``) here, or with ``client`` on a Dask cluster; return a local model."""
    if client is None:
        return model.fit(x, y)
    # LightGBM's Dask interface and dask.array: only when a cluster is given
    import dask.array as da
    import lightgbm as lgb

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    rows = -(-len(y) // n_workers)  # one block of rows per worker
    starts = range(0, len(y), rows)
    # the blocks go to the workers as data (scatter spreads a list over them), not inside the task graph

    def blocks(a: np.ndarray) -> da.Array:
        parts = client.scatter([a[i:i + rows] for i in starts])
        return da.concatenate([da.from_delayed(p, shape=(min(rows, len(a) - i), *a.shape[1:]), dtype=a.dtype)
                               for p, i in zip(parts, starts, strict=True)])

    params = {k: v for k, v in model.get_params().items() if k != "n_jobs"}  # the workers' threads count
    distributed = lgb.DaskLGBMRegressor(client=client, **params)
    with warnings.catch_warnings():
        # LightGBM's wrapper passes its own n_jobs default and then says it ignores it: nothing to act on
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored", category=UserWarning)
        distributed.fit(blocks(x), blocks(y))
    return distributed.to_local()


class DFTSurrogate:
    """Composition model of the DFT property, trained on DFT labels only (cross-fitted).

    Args:
        config: :class:`StackConfig` (its ``surrogate_*``, ``colsample``, ``subsample``, ``seed``, ``n_jobs``).

    """

    def __init__(self, config: StackConfig | None = None):
        self.config = config or StackConfig()
        self._memory: dict[bytes, float] = {}  # the full model's value per descriptor row (:meth:`predict`)

    def fit(self, descriptors: pd.DataFrame, dft_reference: pd.Series, *, client: Any = None,
            workers: int = 1) -> DFTSurrogate:
        """``dft_reference``: one DFT value per formula (index = formula), e.g. from ``reference_per_formula``.

        ``workers`` > 1: the six fits run in that many forked processes, one LightGBM thread each
        (:func:`models.parallel.fork_map`). On these data two one-thread fits side by side take
        about as long as one fit on two threads (benchmarks/surrogate_workers.py), so a surrogate
        stage on 2 cores takes a little more than half the time. The fitted models are the ones a
        one-thread fit here gives; they then predict on the config's ``n_jobs`` threads. Two
        threads build each histogram in another order, so a fit on ``n_jobs`` 2 differs from it
        in the last digits of its values (about 1e-10).

        ``client``: a ``dask.distributed.Client``; the six LightGBM fits (five out-of-fold and
        the full one) then run on its workers through LightGBM's own Dask interface, the rows
        split evenly among them (data-parallel trees: the DFT side is what grows to Materials
        Project size). The fitted models are ordinary local ones; bins and bagging draws are
        per worker, so the trees differ from a local fit's while their accuracy does not
        (tests/models/learners/test_stacked.py).
        """
        c = self.config
        ref = _known(dft_reference)
        if len(ref) < 2 * c.surrogate_folds:
            raise ValueError(f"DFTSurrogate: need >= {2 * c.surrogate_folds} DFT formulas, got {len(ref)}")
        self.columns_ = _numeric_columns(descriptors)
        x = descriptor_matrix(descriptors, ref.index, self.columns_)
        fingerprint = _fingerprint(self.columns_, ref, x)
        x = self._with_bonding(x, ref.index, workers=workers if client is None else 1)
        y = ref.to_numpy(float)
        fold = np.random.default_rng(c.seed).integers(0, c.surrogate_folds, len(y))
        parallel = workers > 1 and client is None
        fit_config = replace(c, n_jobs=1) if parallel else c  # one thread per forked worker (fork_map)

        def fit_one(k: int | None) -> tuple[Any, np.ndarray | None]:
            """Fold ``k``'s model and its out-of-fold values; None: the full model (no values)."""
            rows = np.ones(len(y), bool) if k is None else fold != k
            m = _booster(fit_config, trees=c.surrogate_trees, leaves=c.surrogate_leaves, lr=c.surrogate_lr,
                         seed=c.seed + (0 if k is None else k), max_bin=c.surrogate_max_bin,
                         colsample=c.surrogate_colsample)
            m = _fit_on(m, x[rows], y[rows], client)
            return m, None if k is None else m.predict(x[~rows])

        pieces = [*range(c.surrogate_folds), None]
        fitted = list(bar(fork_map(fit_one, pieces, workers=workers if parallel else 1), total=len(pieces),
                          desc="DFT surrogate", unit="fit"))
        oof = np.empty(len(y))
        for k, (_, values) in zip(pieces, fitted, strict=True):
            if k is not None:
                oof[fold == k] = values
        self.out_of_fold_ = pd.Series(oof, index=ref.index)
        self.model_ = fitted[-1][0]
        if parallel:  # a local model (no client): fitted in a worker on one thread
            self.model_.set_params(n_jobs=c.n_jobs)  # predictions here take the config's threads again
        self.mae_ = float(np.mean(np.abs(oof - y)))
        self.fingerprint_ = fingerprint
        self._memory = {}  # values of the trees fitted before, if any
        return self

    #: at most this many descriptor rows' full-model values are remembered (:meth:`predict`); then it starts afresh
    MEMORY_ROWS = 100_000

    def predict(self, descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
        """Surrogate DFT value per formula: out-of-fold for DFT training formulas, full model otherwise.

        The full model's values are remembered by descriptor row (the model's exact input, so a
        remembered value is the one the trees would give again): the folds, bags and inner
        interval fits that ask for the same formulas read them instead of walking every tree
        again. :meth:`remember` computes them ahead, before the folds fork. Copies made by
        :meth:`for_config` share what is remembered (same trees).
        """
        formulas = list(formulas)
        out = np.array(pd.Series(formulas).map(self.out_of_fold_), dtype=float)  # a writable copy
        new = np.isnan(out)
        if new.any():
            unseen = [f for f, n in zip(formulas, new, strict=True) if n]
            out[new] = self._full_model(self._with_bonding(descriptor_matrix(descriptors, unseen, self.columns_), unseen))
        return out

    def _with_bonding(self, x: np.ndarray, formulas: Sequence[str], *, workers: int = 1) -> np.ndarray:
        """Return the model's input: the descriptor rows, with ``surrogate_bonding`` the bonding and ionic columns after them."""
        if not self.config.surrogate_bonding:
            return x
        return np.column_stack([x, _bonding_block(list(formulas), workers=workers).astype(np.float32)])

    def remember(self, descriptors: pd.DataFrame, formulas: Sequence[str] | None = None) -> int:
        """Compute the full model's value of every formula without a DFT label; return how many.

        ``formulas``: those the work ahead will ask for (the measured ones); None: every formula of
        ``descriptors``. Called once before work forks (evaluate's folds, the metal stage's folds), so
        that every process reads the values instead of computing them again. Changes no prediction:
        a formula not remembered is computed when asked.
        """
        asked = descriptors["formula"] if formulas is None else dict.fromkeys(formulas)
        formulas = [f for f in asked if f not in self.out_of_fold_.index]
        if formulas:
            self.predict(descriptors, formulas)
        return len(formulas)

    def _full_model(self, x: np.ndarray) -> np.ndarray:
        memory = self._memory
        keys = [row.tobytes() for row in x]
        todo = [i for i, key in enumerate(keys) if key not in memory]
        out = np.array([memory.get(key, np.nan) for key in keys], dtype=float)
        if todo:
            # a loaded surrogate holds a bare Booster, which would take every core: give it the config's threads
            kwargs = {} if hasattr(self.model_, "booster_") else {"num_threads": self.config.n_jobs}
            values = np.asarray(self.model_.predict(x[todo], **kwargs), dtype=float)
            out[todo] = values
            if len(memory) + len(todo) > self.MEMORY_ROWS:
                memory.clear()
            memory.update(zip([keys[i] for i in todo], values.tolist(), strict=True))
        return out

    def mismatch(self, config: StackConfig, descriptors: pd.DataFrame, dft_reference: pd.Series) -> str | None:
        """Why this fitted surrogate is not the one :meth:`fit` would give for these inputs; None when it is.

        A surrogate fitted once and shared (the surrogate stage's, ``data/surrogates/``) is reused
        only when its :data:`SURROGATE_FIELDS` equal ``config``'s and it was fitted on the same DFT
        references and descriptor rows (sha256 of both; a surrogate without one never matches).
        """
        fields = self._differing(config)
        if fields:
            return "settings differ: " + ", ".join(f"{f} {getattr(self.config, f)} != {getattr(config, f)}"
                                                     for f in fields)
        ref, columns = _known(dft_reference), _numeric_columns(descriptors)
        try:
            x = descriptor_matrix(descriptors, ref.index, columns)
        except ValueError as exc:
            return f"descriptors: {exc}"
        if getattr(self, "fingerprint_", None) != _fingerprint(columns, ref, x):
            return f"fitted on other DFT references or descriptors ({len(self.out_of_fold_)} formulas, now {len(ref)})"
        return None

    def for_config(self, config: StackConfig) -> DFTSurrogate:
        """Return a shallow copy carrying ``config`` (its :data:`SURROGATE_FIELDS` must be this one's), as if fitted with it.

        A shared surrogate then predicts with the caller's threads (``n_jobs``: one per forked
        fold worker) and is saved with the caller's settings, exactly like one fitted there.
        """
        fields = self._differing(config)
        if fields:
            raise ValueError(f"DFTSurrogate.for_config: the surrogate was fitted with other {', '.join(fields)}")
        out = copy.copy(self)
        out.config = config
        return out

    def _differing(self, config: StackConfig) -> list[str]:
        return [f for f in SURROGATE_FIELDS if getattr(self.config, f) != getattr(config, f)]


def reuse_surrogate(surrogate: DFTSurrogate | None, config: StackConfig, descriptors: pd.DataFrame,
                    dft_reference: pd.Series, *, who: str) -> DFTSurrogate | None:
    """Return ``surrogate`` (the surrogate stage's) carrying ``config`` when it is the fit ``config`` would give, else None.

    The one rule for a shared surrogate (train's served model, evaluate's folds): reused only when
    :meth:`DFTSurrogate.mismatch` finds nothing, logged either way under ``who`` (a mismatch is a
    warning saying why; the caller then fits its own).
    """
    if surrogate is None:
        return None
    why = surrogate.mismatch(config, descriptors, dft_reference)
    if why:
        log.warning("%s: the shared DFT surrogate is not this run's (%s); fitting it here", who, why)
        return None
    log.info("%s: DFT surrogate from the surrogate stage (out-of-fold MAE %.4f on %d formulas)", who, surrogate.mae_,
             len(surrogate.out_of_fold_))
    return surrogate.for_config(config)


def _known(dft_reference: pd.Series) -> pd.Series:
    """Return the DFT references a surrogate learns: known values, one per formula."""
    ref = dft_reference.dropna()
    return ref[~ref.index.duplicated()]


def _numeric_columns(descriptors: pd.DataFrame) -> list[str]:
    return list(descriptors.drop(columns="formula").select_dtypes(include="number").columns)


def _fingerprint(columns: Sequence[str], ref: pd.Series, x: np.ndarray) -> str:
    """sha256 of what a surrogate's fit reads: descriptor column names, reference formulas and values, descriptor rows."""
    h = hashlib.sha256(json.dumps(list(columns)).encode())
    h.update("\n".join(map(str, ref.index)).encode())
    h.update(np.ascontiguousarray(ref.to_numpy(float)).tobytes())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()


class StackedModel:
    """Gradient boosting on descriptors + DFT surrogate + known DFT value + has-DFT flag.

    Args:
        config: :class:`StackConfig`.
        dft_reference: one DFT value per formula (index = formula); formulas absent have no DFT entry.
        surrogate: a fitted :class:`DFTSurrogate` to reuse (CV folds share it: it saw no
            measurement); fitted on ``dft_reference`` in :meth:`fit` when None.
        extra_reference: other known DFT values per formula (name -> Series indexed by formula,
            e.g. HSE or GLLB-SC band gaps known for a few thousand entries), appended as
            columns (NaN where unknown; always looked up by formula).
        shift_field: the OT alignment's calibration shifts extended to every composition
            (:class:`models.learners.ShiftField`, fitted on the training measurements only).
            When given, two columns are appended (the neighbours' shift and the best DFT
            estimate plus that shift), and with ``config.ot_in_correction`` the shift is also a
            linear term of the fitted correction; None: the model uses no optimal transport.

    """

    MF_COLUMNS = ("surrogate", "dft_value", "has_dft", "dft_best")

    def __init__(self, config: StackConfig | None = None, *, dft_reference: pd.Series,
                 surrogate: DFTSurrogate | None = None, extra_reference: dict[str, pd.Series] | None = None,
                 shift_field: ShiftField | None = None):
        self.config = config or StackConfig()
        self.shift_field = shift_field
        self.dft_reference = dft_reference[~dft_reference.index.duplicated()]
        self.surrogate = surrogate
        self.extra_reference = {k: v.dropna()[~v.dropna().index.duplicated()] for k, v in (extra_reference or {}).items()}
        self.terms_: _Terms | None = None

    def features(self, descriptors: pd.DataFrame, formulas: Sequence[str], dft_value: np.ndarray | None = None,
                 extra_value: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Descriptor columns (with ``config.bonding`` the bonding ones), :attr:`MF_COLUMNS`, extra references, OT columns.

        ``MF_COLUMNS`` hold NaN in ``dft_value`` where none is known; the OT columns (the
        neighbours' shift and the best estimate plus it) are there only with a shift field.

        ``dft_value``: per-row DFT values to use instead of the training-time lookup (serving
        passes the caller's, NaN where unknown); None looks formulas up in ``dft_reference``.
        ``extra_value``: the same for extra references by name (serving passes a chosen
        polymorph's own HSE, GLLB-SC or SCAN value, NaN where that polymorph has none); the
        references it does not name are looked up by formula.
        """
        formulas = list(formulas)
        x = descriptor_matrix(descriptors, formulas, self.surrogate.columns_)
        if self.config.bonding:
            x = np.column_stack([x, _bonding_block(formulas)])
        sur = self.surrogate.predict(descriptors, formulas)
        if dft_value is None:
            known = pd.Series(formulas).map(self.dft_reference).to_numpy(float)
        else:
            known = np.asarray(dft_value, float)
            if known.shape != (len(formulas),):
                raise ValueError(f"StackedModel: {len(formulas)} formulas but dft_value of shape {known.shape}")
        has = ~np.isnan(known)
        best = np.where(has, known, sur)
        given = extra_value or {}
        unknown = sorted(set(given) - set(self.extra_reference))
        if unknown:
            raise ValueError(f"StackedModel: extra_value names {unknown}, the model's extra references are "
                             f"{list(self.extra_reference)}")
        extra = []
        for name, looked_up in self.extra_lookup(formulas).items():
            column = np.asarray(given[name], float) if name in given else looked_up
            if column.shape != (len(formulas),):
                raise ValueError(f"StackedModel: {len(formulas)} formulas but extra_value[{name!r}] of shape {column.shape}")
            extra.append(column)
        if self.shift_field is not None:
            shift = self.shift_field.predict(descriptors, formulas)
            extra += [shift, best + shift]
        return np.column_stack([x, sur, known, has.astype(float), best, *extra]).astype(np.float32)

    def extra_lookup(self, formulas: Sequence[str]) -> dict[str, np.ndarray]:
        """Per extra reference: its value for each formula, looked up as in training (NaN where unknown)."""
        keys = pd.Series(list(formulas), dtype=object)
        return {name: keys.map(ref).to_numpy(float) for name, ref in self.extra_reference.items()}

    def fit(self, descriptors: pd.DataFrame, formulas: Sequence[str], y: np.ndarray, *,
            workers: int = 1) -> StackedModel:
        """Fit the correction, the calibration line and ``config.bags`` boosters on the residual.

        ``workers`` > 1: the boosters in that many forked processes, one LightGBM thread each
        (:func:`models.parallel.fork_map`; the models a one-thread fit here gives, which then
        predict on the config's ``n_jobs`` threads), as :meth:`DFTSurrogate.fit`.
        """
        c = self.config
        y = np.asarray(y, float)
        if len(y) != len(formulas):
            raise ValueError(f"StackedModel: {len(formulas)} formulas but {len(y)} targets")
        if len(y) < 20 or not np.isfinite(y).all():
            raise ValueError(f"StackedModel: need >= 20 finite targets, got {len(y)} ({int((~np.isfinite(y)).sum())} non-finite)")
        if self.surrogate is None:
            self.surrogate = DFTSurrogate(c).fit(descriptors, self.dft_reference)
        x = self.features(descriptors, formulas)
        base = self._fit_correction(list(formulas), x, y)
        self.calibration_ = self.target_range_ = None
        if c.extrapolate:
            self.calibration_ = _major_axis(base, y)
            base = self._calibrated(base)
            lo, hi = np.quantile(y, [0.02, 0.98])
            self.target_range_ = (float(lo), float(hi), float(np.std(y)) or 1.0)
        x = np.column_stack([x, base]).astype(np.float32)
        fit_config = replace(c, n_jobs=1) if workers > 1 else c  # one thread per forked worker (fork_map)

        def booster(b: int):
            m = _booster(fit_config, trees=c.trees, leaves=c.leaves, lr=c.lr, seed=c.seed + b, max_bin=c.max_bin,
                         colsample=c.colsample, objective=c.objective, min_child_samples=c.min_child_samples)
            if c.monotone:
                m.set_params(monotone_constraints=self._monotone(x.shape[1]), monotone_constraints_method="advanced")
            return m.fit(x, y - base)

        self.models_ = list(bar(fork_map(booster, range(c.bags), workers=workers), total=c.bags, desc="boosters",
                                unit="booster"))
        if workers > 1:
            for m in self.models_:
                m.set_params(n_jobs=c.n_jobs)  # predictions here take the config's threads again
        return self

    def _monotone(self, n_columns: int) -> list[int]:
        """LightGBM constraints: +1 on the known DFT value, the best estimate, best + OT shift and the corrected estimate."""
        out = [0] * n_columns
        for j in (self._best_column - 2, self._best_column, n_columns - 1):
            out[j] = 1
        if self.shift_field is not None:
            out[n_columns - 2] = 1
        return out

    @property
    def feature_names(self) -> list[str]:
        """Names of the feature columns before the multi-fidelity ones: descriptors (and with ``config.bonding`` the bonding ones)."""
        bonding = [*BONDING_COLUMNS, *IONIC_COLUMNS] if self.config.bonding else []
        return [*self.surrogate.columns_, *bonding]

    def _fractions(self, formulas: list[str], x: np.ndarray) -> np.ndarray:
        """Design of the fitted correction: element fractions, the element classes' fractions, the correction terms (+ the OT shift column with a shift field)."""
        col = {e: i for i, e in enumerate(self.elements_)}
        out = np.zeros((len(formulas), len(col)))
        for r, f in enumerate(formulas):
            for e, v in element_fractions(f).items():
                if e in col:
                    out[r, col[e]] = v
        if self.config.correction_classes:
            out = np.column_stack([out, class_fractions(formulas, self.config.correction_classes)])
        if self.terms_ is not None:
            t = self.terms_
            values = np.clip(x[:, t.columns].astype(float), t.low, t.high)
            out = np.column_stack([out, (values - t.center) / t.scale])
        if self.shift_field is not None and self.config.ot_in_correction:
            out = np.column_stack([out, x[:, self._shift_column]])
        return out

    def _fit_terms(self, x: np.ndarray) -> _Terms | None:
        """Return the correction terms' columns with their training centre, scale and range (None without terms)."""
        names = self.config.correction_terms
        if not names:
            return None
        known = self.feature_names
        unknown = self.config.missing_terms(self.surrogate.columns_)
        if unknown:
            hint = "" if self.config.bonding else "; the bonding columns need train.stack.bonding for this property"
            raise ValueError(f"StackConfig.correction_terms: no feature column {unknown[0]!r} (the descriptor columns, "
                             f"e.g. {known[0]!r}{hint})")
        columns = [known.index(n) for n in names]
        values = x[:, columns].astype(float)
        scale = values.std(axis=0)
        return _Terms(names=tuple(names), columns=columns, center=values.mean(axis=0),
                      scale=np.where(scale > 0, scale, 1.0), low=values.min(axis=0), high=values.max(axis=0))

    def _fit_correction(self, formulas: list[str], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fit the ridge correction of the best DFT estimate; return the corrected estimate per row."""
        best = x[:, self._best_column].astype(float)
        if self.config.correction_alpha is None:
            self.elements_, self.correction_, self.terms_ = [], None, None
            return np.zeros(len(y))
        # scikit-learn: about a second to import; only this method needs it
        from sklearn.linear_model import Ridge

        self.elements_ = sorted({e for f in formulas for e in element_fractions(f)})
        self.terms_ = self._fit_terms(x)
        design = self._fractions(formulas, x)
        self.correction_ = Ridge(alpha=self.config.correction_alpha).fit(design, y - best)
        return best + self.correction_.predict(design)

    def _corrected(self, formulas: list[str], x: np.ndarray) -> np.ndarray:
        if self.correction_ is None:
            base = np.zeros(len(x))
        else:
            base = x[:, self._best_column].astype(float) + self.correction_.predict(self._fractions(formulas, x))
        return self._calibrated(base)

    def _calibrated(self, base: np.ndarray) -> np.ndarray:
        """Apply the extrapolating calibration line to the corrected estimate (unchanged without one)."""
        return base if self.calibration_ is None else self.calibration_[0] + self.calibration_[1] * base

    def _faded(self, base: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """``residual`` with its pull back toward the training targets' range faded out beyond that range."""
        if self.target_range_ is None:
            return residual
        lo, hi, width = self.target_range_
        weight = np.clip(1.0 - np.maximum(np.maximum(base - hi, lo - base), 0.0) / width, 0.0, 1.0)
        pull = ((base > hi) & (residual < 0)) | ((base < lo) & (residual > 0))
        return np.where(pull, weight * residual, residual)

    @property
    def _best_column(self) -> int:
        bonding = len(BONDING_COLUMNS) + len(IONIC_COLUMNS) if self.config.bonding else 0
        return len(self.surrogate.columns_) + bonding + len(self.MF_COLUMNS) - 1

    def apply_bounds(self, formulas: list[str], out: np.ndarray, spread: np.ndarray | None = None) -> np.ndarray:
        """Clamp ``out`` at ``config.clamp_min``; set pure elements to ``config.element_value`` (spread 0), in place."""
        if self.config.clamp_min is not None:
            np.maximum(out, self.config.clamp_min, out=out)
        if self.config.element_value is not None:
            element = element_mask(formulas)
            out[element] = self.config.element_value
            if spread is not None:
                spread[element] = 0.0
        return out

    @property
    def _shift_column(self) -> int:
        """Column of the OT shift in :meth:`features` (after the extra references; needs a shift field)."""
        return self._best_column + len(self.extra_reference) + 1

    def predict(self, descriptors: pd.DataFrame, formulas: Sequence[str], dft_value: np.ndarray | None = None,
                extra_value: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Predicted measurement per formula (see :meth:`features` for ``dft_value`` and ``extra_value``)."""
        return self.predict_with_spread(descriptors, formulas, dft_value, extra_value)[0]

    def rearranged(self, descriptors: pd.DataFrame, formulas: Sequence[str], dft_value: np.ndarray,
                   extra_value: dict[str, np.ndarray] | None = None, *, points: int = 256) -> np.ndarray:
        """Prediction per row made non-decreasing in its DFT value: the monotone rearrangement of the model's response.

        The boosters are not constrained to rise with the DFT value (that cost accuracy, see
        ``config.monotone``), so the prediction as a function of a caller's DFT value can dip.
        Per formula (and its other inputs), the response is evaluated on ``points`` evenly spaced
        DFT values spanning the DFT reference's range and sorted (the monotone rearrangement, the
        1-D optimal transport map of those values onto themselves); a row's DFT value is then
        read off the sorted curve by linear interpolation, and beyond the range it continues
        with the calibrated DFT estimate's slope. The result is non-decreasing in the DFT value
        for each formula, whatever the value; where the response already rises, it differs from
        :meth:`predict` by at most the step between neighbouring grid values. Rows without a
        finite DFT value are refused (use :meth:`predict`).
        """
        formulas = list(formulas)
        d = np.asarray(dft_value, float)
        if d.shape != (len(formulas),) or not np.isfinite(d).all():
            raise ValueError(f"StackedModel.rearranged: {len(formulas)} formulas need as many finite DFT values")
        ref = self.dft_reference.to_numpy(float)
        lo, hi = float(np.nanmin(ref)), float(np.nanmax(ref))
        grid = np.linspace(lo, hi, points)
        slope = 1.0 if self.calibration_ is None else max(float(self.calibration_[1]), 0.0)
        extra = {k: np.asarray(v, float) for k, v in (extra_value or {}).items()}
        # one curve per distinct (formula, other inputs): a sweep of one formula is predicted once
        keys = [(f, *(round(float(v[i]), 12) if np.isfinite(v[i]) else None for v in extra.values()))
                for i, f in enumerate(formulas)]
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        firsts = [rows[0] for rows in groups.values()]
        curve_formulas = [formulas[i] for i in firsts for _ in grid]
        curve_extra = {k: np.repeat(v[firsts], points) for k, v in extra.items()}
        curves = self.predict(descriptors, curve_formulas, np.tile(grid, len(firsts)), curve_extra)
        out = np.empty(len(formulas))
        for c, rows in enumerate(groups.values()):
            sorted_curve = np.sort(curves[c * points:(c + 1) * points])
            x = d[rows]
            inside = np.interp(np.clip(x, lo, hi), grid, sorted_curve)
            out[rows] = inside + slope * (np.maximum(x - hi, 0.0) - np.maximum(lo - x, 0.0))
        return self.apply_bounds(formulas, out)

    def predict_with_spread(self, descriptors: pd.DataFrame, formulas: Sequence[str],
                            dft_value: np.ndarray | None = None,
                            extra_value: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and the standard deviation over the bagged boosters (0 with one bag)."""
        formulas = list(formulas)
        x = self.features(descriptors, formulas, dft_value, extra_value)
        base = self._corrected(formulas, x)
        x = np.column_stack([x, base]).astype(np.float32)
        residuals = np.stack([self._faded(base, m.predict(x)) for m in self.models_])
        spread = residuals.std(axis=0)
        return self.apply_bounds(formulas, base + residuals.mean(axis=0), spread), spread


# ----------------------------------------------------------------------------- storage (no pickle)

_HEADER = "stacked.json"


def _major_axis(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope (sd(y) / sd(x)) of the reduced-major-axis line of ``y`` against ``x``; r <= 0 is an error."""
    sx, sy = float(np.std(x)), float(np.std(y))
    r = float(np.corrcoef(x, y)[0, 1]) if sx > 0 and sy > 0 else 0.0
    if not r > 0:
        raise ValueError(f"StackedModel: the corrected DFT estimate does not rise with the measurement (r = {r:.3f}); "
                         "set train.stack.extrapolate to [] for this property")
    slope = sy / sx
    return float(np.mean(y) - slope * np.mean(x)), slope


class _LinearMap:
    """The fitted ridge correction as plain numbers (``predict`` = ``x @ coef + intercept``)."""

    def __init__(self, coef: np.ndarray, intercept: float):
        self.coef_ = np.asarray(coef, dtype=float)
        self.intercept_ = float(intercept)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=float) @ self.coef_ + self.intercept_


@dataclass(frozen=True)
class _Terms:
    """The fitted correction's linear terms: feature ``columns`` (``names``), clipped to ``[low, high]``, z-scored."""

    names: tuple[str, ...]
    columns: list[int]
    center: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def state(self) -> dict[str, list]:
        return {"names": list(self.names), "columns": [int(c) for c in self.columns],
                **{k: [float(v) for v in getattr(self, k)] for k in ("center", "scale", "low", "high")}}

    @classmethod
    def from_state(cls, state: dict[str, list]) -> _Terms:
        return cls(names=tuple(state["names"]), columns=[int(c) for c in state["columns"]],
                   **{k: np.asarray(state[k], dtype=float) for k in ("center", "scale", "low", "high")})


def _series(s: pd.Series) -> dict[str, list]:
    return {"index": [str(i) for i in s.index], "values": [float(v) for v in s.to_numpy(dtype=float)]}


def _unseries(d: dict[str, list]) -> pd.Series:
    return pd.Series(np.asarray(d["values"], dtype=float), index=list(d["index"]), dtype=float)


def save_stacked(model: StackedModel, directory: Path) -> None:
    """Write ``model`` as JSON (numbers, formulas, config) plus LightGBM text model files.

    Nothing in it is a pickle: :func:`load_stacked` rebuilds the model from data only, so
    loading a model file cannot run code (the threat :mod:`models._io` also guards).
    """
    directory.mkdir(parents=True, exist_ok=True)
    boosters = []
    for k, m in enumerate(model.models_):
        name = f"booster_{k}.txt"
        (directory / name).write_text(_booster_text(m), encoding="utf-8")
        boosters.append(name)
    surrogate = surrogate_state(model.surrogate, directory, "surrogate.txt")
    correction = None
    if model.correction_ is not None:
        correction = {"coef": [float(v) for v in np.ravel(model.correction_.coef_)],
                      "intercept": float(np.ravel([model.correction_.intercept_])[0]),
                      "terms": None if model.terms_ is None else model.terms_.state()}
    if model.shift_field is not None:
        model.shift_field.save(directory / "shift_field")
    state = {
        "config": asdict(model.config),
        "dft_reference": _series(model.dft_reference),
        "extra_reference": {k: _series(v) for k, v in model.extra_reference.items()},
        "elements": list(model.elements_),
        "correction": correction,
        "calibration": None if model.calibration_ is None else list(model.calibration_),
        "target_range": None if model.target_range_ is None else list(model.target_range_),
        "boosters": boosters,
        "shift_field": None if model.shift_field is None else "shift_field",
        "surrogate": surrogate,
    }
    write_header(directory / _HEADER, cls="StackedModel", files=[*boosters, "surrogate.txt"], indent=1, **state)


def load_stacked(directory: Path) -> StackedModel:
    """Rebuild a :func:`save_stacked` model (JSON + LightGBM text files; no pickle)."""
    # LightGBM: only when a booster is fitted or loaded
    import lightgbm

    state = read_header(directory / _HEADER, classes=("StackedModel",), required=["surrogate.txt"],
                        what="stacked model", error=ValueError)
    if not set(state["boosters"]) <= set(state["files"]):
        raise ValueError(f"{directory / _HEADER} does not list the sha256 of every booster")

    def booster(name: str):
        return lightgbm.Booster(model_str=(directory / name).read_text(encoding="utf-8"))

    sur = surrogate_from_state(state["surrogate"], directory)
    model = StackedModel(_saved_config(state["config"]), dft_reference=_unseries(state["dft_reference"]),
                         surrogate=sur,
                         extra_reference={k: _unseries(v) for k, v in state["extra_reference"].items()},
                         shift_field=ShiftField.load(directory / state["shift_field"]) if state.get("shift_field") else None)
    model.elements_ = list(state["elements"])
    corr = state["correction"]
    model.correction_ = None if corr is None else _LinearMap(np.asarray(corr["coef"]), corr["intercept"])
    # models saved before the correction terms have no "terms" key
    model.terms_ = _Terms.from_state(corr["terms"]) if corr is not None and corr.get("terms") else None
    if model.terms_ is not None:
        names = model.feature_names
        found = [names[c] if c < len(names) else None for c in model.terms_.columns]
        if found != list(model.terms_.names):
            raise ValueError(f"{directory / _HEADER}: the correction terms {list(model.terms_.names)} are not the "
                             f"model's feature columns {found} (a file written by another version?)")
    # models saved before the extrapolating calibration have neither key
    model.calibration_ = tuple(state["calibration"]) if state.get("calibration") else None
    model.target_range_ = tuple(state["target_range"]) if state.get("target_range") else None
    model.models_ = [booster(name) for name in state["boosters"]]
    return model


def _saved_config(config: dict) -> StackConfig:
    """Rebuild a saved :class:`StackConfig` (one saved before ``surrogate_colsample`` drew the surrogate's columns with ``colsample``)."""
    return StackConfig(**{"surrogate_colsample": config.get("colsample", StackConfig.colsample), **config})


def surrogate_state(surrogate: DFTSurrogate, directory: Path, name: str) -> dict:
    """Write a fitted surrogate's booster as ``directory / name``; return the rest of it as JSON-ready data."""
    (directory / name).write_text(_booster_text(surrogate.model_), encoding="utf-8")
    return {"config": asdict(surrogate.config), "columns": list(surrogate.columns_), "mae": surrogate.mae_,
            "out_of_fold": _series(surrogate.out_of_fold_), "booster": name,
            "fingerprint": getattr(surrogate, "fingerprint_", None)}


def surrogate_from_state(state: dict, directory: Path) -> DFTSurrogate:
    """Rebuild a :func:`surrogate_state` surrogate (its booster file checked by the caller's header)."""
    # LightGBM: only when a booster is fitted or loaded
    import lightgbm

    sur = DFTSurrogate(_saved_config(state["config"]))
    sur.columns_, sur.mae_ = list(state["columns"]), float(state["mae"])
    sur.out_of_fold_ = _unseries(state["out_of_fold"])
    sur.model_ = lightgbm.Booster(model_str=(directory / state["booster"]).read_text(encoding="utf-8"))
    sur.fingerprint_ = state.get("fingerprint")  # None in files written before it was stored
    return sur


_SURROGATE_HEADER = "surrogate.json"


def save_surrogate(surrogate: DFTSurrogate, directory: Path) -> None:
    """Write a fitted surrogate on its own (the surrogate stage's ``data/surrogates/<property>/``): JSON + LightGBM text."""
    directory.mkdir(parents=True, exist_ok=True)
    state = surrogate_state(surrogate, directory, "surrogate.txt")
    write_header(directory / _SURROGATE_HEADER, cls="DFTSurrogate", files=["surrogate.txt"], indent=None, **state)


def load_surrogate(directory: Path) -> DFTSurrogate:
    """Rebuild a :func:`save_surrogate` surrogate; raises ``ValueError`` naming the file when it is missing or altered."""
    state = read_header(Path(directory) / _SURROGATE_HEADER, classes=("DFTSurrogate",), required=["surrogate.txt"],
                        what="DFT surrogate", error=ValueError)
    return surrogate_from_state(state, Path(directory))


def _booster_text(m) -> str:
    booster = m.booster_ if hasattr(m, "booster_") else m
    return booster.model_to_string()
