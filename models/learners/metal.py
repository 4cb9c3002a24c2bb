r"""Metal / non-metal classification of compositions, multi-fidelity like the band-gap model.

Every measured band gap the regressors learn from is a non-metal's, so on a metal they
answer a confident positive gap. :class:`MetalClassifier` gives the probability that a
composition is a metal (measured gap 0), from four kinds of evidence:

* **composition descriptors** (the featurize stage's Magpie, stoichiometry and
  valence-orbital statistics);
* **the DFT metallicity of the formula's polymorphs** where the Materials Project has any:
  how many entries, the smallest PBE gap, the chosen polymorph's PBE gap
  (:func:`models.properties.choose_polymorphs`) and the fraction of entries with a PBE gap of
  0. PBE wrongly metallises some narrow-gap semiconductors, so these are features, never
  the label;
* **bonding descriptors** (:func:`featurizers.bonding.bonding_descriptors`): the fractions of
  metals, transition metals, f-block elements, halogens, chalcogens and anion formers, the
  valence electrons per atom and the parity of the formula unit's valence-electron count;
* **surrogates** where no DFT entry exists: two composition models fitted on the DFT
  entries alone (no measurement involved), one of the PBE gap and one of "PBE says metal",
  cross-fitted so that a covered formula's surrogate feature is an out-of-sample estimate
  exactly like an uncovered formula's (as :class:`~models.learners.DFTSurrogate`).

Bagged LightGBM classifiers on those columns give the probability. Which probability makes a
row "metal" is not fixed here: :func:`choose_threshold` picks it on training folds by the
error it adds to a band-gap prediction (see there).

Stored without pickle (JSON + LightGBM text files, sha256-checked on load).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.bonding import bonding_descriptors, ionic_descriptors
from models._io import read_header, write_header
from models.learners.config import MetalConfig
from models.learners.stacked import DFTSurrogate, descriptor_matrix, surrogate_from_state, surrogate_state
from models.properties import choose_polymorphs

__all__ = [
    "DFT_METAL_COLUMNS",
    "FeatureCache",
    "MetalClassifier",
    "choose_threshold",
    "dft_metal_table",
    "load_metal",
    "save_metal",
]

#: Per-formula DFT metallicity columns (:func:`dft_metal_table`); NaN where the formula has no entry.
DFT_METAL_COLUMNS = ("dft_entries", "dft_min_gap", "dft_gap", "dft_metal_fraction")


def dft_metal_table(dft: pd.DataFrame, *, metal_gap: float = 0.0) -> pd.DataFrame:
    """Per formula with a DFT PBE gap: :data:`DFT_METAL_COLUMNS`. Index: formula.

    ``dft``: one row per DFT entry with ``formula``, ``dft_value`` (the PBE gap, eV) and
    optionally ``material_id`` / ``stability`` (the polymorph rule's inputs).
    """
    frame = dft[np.isfinite(dft["dft_value"].to_numpy(float))]
    grouped = frame.groupby("formula")["dft_value"]
    out = pd.DataFrame({
        "dft_entries": grouped.size().astype(float),
        "dft_min_gap": grouped.min(),
        "dft_gap": choose_polymorphs(frame)["dft_value"].astype(float),
        "dft_metal_fraction": (frame["dft_value"] <= metal_gap).astype(float).groupby(frame["formula"]).mean(),
    })
    return out.loc[:, list(DFT_METAL_COLUMNS)]


def _classifier(config: MetalConfig, seed: int):
    # LightGBM: only when a classifier is fitted
    import lightgbm as lgb

    return lgb.LGBMClassifier(
        n_estimators=config.trees, num_leaves=config.leaves, learning_rate=config.lr, subsample=config.subsample,
        subsample_freq=1, colsample_bytree=config.colsample, min_child_samples=config.min_child_samples,
        max_bin=config.max_bin, random_state=seed, n_jobs=config.n_jobs, verbose=-1,
    )


def _probability(model, x: np.ndarray) -> np.ndarray:
    """P(class 1) from a fitted ``LGBMClassifier`` or a loaded binary ``Booster``."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)[:, 1]
    return np.asarray(model.predict(x), dtype=float)


@dataclass(frozen=True)
class FeatureCache:
    """:meth:`MetalClassifier.features` of a fixed set of formulas, computed once (:meth:`MetalClassifier.cache_features`).

    The columns depend on the descriptors frame, the DFT table, the two DFT surrogates and the
    config's ``bonding`` / ``ionic`` flags, never on a measurement; a classifier uses the cache
    only when all of them are the ones the cache was built from (the same objects; an equal DFT
    table).
    """

    descriptors: pd.DataFrame
    dft_table: pd.DataFrame
    surrogates: tuple[DFTSurrogate, DFTSurrogate]
    flags: tuple[bool, bool]
    rows: dict[str, int]
    matrix: np.ndarray

    def lookup(self, classifier: MetalClassifier, descriptors: pd.DataFrame, formulas: list[str]) -> np.ndarray | None:
        """Return the cached rows of ``formulas`` for ``classifier``, or None where the cache does not apply or lacks one."""
        if not (self.descriptors is descriptors and self.flags == (classifier.config.bonding, classifier.config.ionic)
                and self.surrogates[0] is classifier.gap_surrogate and self.surrogates[1] is classifier.metal_surrogate
                and (self.dft_table is classifier.dft_table or self.dft_table.equals(classifier.dft_table))):
            return None
        rows = [self.rows.get(f) for f in formulas]
        return None if None in rows else self.matrix[np.asarray(rows, dtype=np.int64)]


class MetalClassifier:
    """Probability that a composition is a metal (see the module docstring for the features).

    Args:
        config: :class:`MetalConfig`.
        dft_table: :func:`dft_metal_table` of the DFT entries (formulas absent have no entry).
        gap_surrogate, metal_surrogate: fitted :class:`DFTSurrogate` of the PBE gap and of the
            PBE metal indicator to reuse (cross-validation folds share them: they saw no
            measurement); fitted in :meth:`fit` when None.
        feature_cache: a :class:`FeatureCache` to look feature rows up in (cross-validation folds
            share one), used only where it applies.

    """

    def __init__(self, config: MetalConfig | None = None, *, dft_table: pd.DataFrame,
                 gap_surrogate: DFTSurrogate | None = None, metal_surrogate: DFTSurrogate | None = None,
                 feature_cache: FeatureCache | None = None):
        self.config = config or MetalConfig()
        missing = set(DFT_METAL_COLUMNS) - set(dft_table.columns)
        if missing:
            raise ValueError(f"MetalClassifier: dft_table lacks columns {sorted(missing)}")
        self.dft_table = dft_table.loc[~dft_table.index.duplicated(), list(DFT_METAL_COLUMNS)]
        self.gap_surrogate = gap_surrogate
        self.metal_surrogate = metal_surrogate
        self.feature_cache = feature_cache

    def fit_surrogates(self, descriptors: pd.DataFrame, *, workers: int = 1) -> MetalClassifier:
        """Fit the two DFT surrogates on the DFT entries (a no-op for those already given).

        ``workers`` > 1: each surrogate's six fits run in that many forked processes
        (:meth:`DFTSurrogate.fit`), one LightGBM thread each: the same models as one after the
        other with the config's ``n_jobs`` 1; only with that setting (LightGBM on more threads in a
        forked worker can hang), else one after the other here.
        """
        sconf = self.config.surrogate_config()
        metal = (self.dft_table["dft_gap"] <= self.config.dft_metal_gap).astype(float)
        for name, target in (("gap_surrogate", self.dft_table["dft_gap"]), ("metal_surrogate", metal)):
            if getattr(self, name) is None:
                setattr(self, name, DFTSurrogate(sconf).fit(descriptors, target,
                                                            workers=workers if sconf.n_jobs == 1 else 1))
        return self

    def cache_features(self, descriptors: pd.DataFrame, formulas: Sequence[str]) -> FeatureCache:
        """Compute :meth:`features` of ``formulas`` once and keep them (``feature_cache``); returns the cache.

        The rows are the ones :meth:`features` computes (every column is a function of the
        formula alone), so folds that look them up fit the same models.
        """
        formulas = list(dict.fromkeys(formulas))
        self.feature_cache = FeatureCache(
            descriptors=descriptors, dft_table=self.dft_table, surrogates=(self.gap_surrogate, self.metal_surrogate),
            flags=(self.config.bonding, self.config.ionic), rows={f: k for k, f in enumerate(formulas)},
            matrix=self._compute_features(descriptors, formulas))
        return self.feature_cache

    def features(self, descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
        """Descriptors, a has-DFT flag, :data:`DFT_METAL_COLUMNS` (NaN without an entry), the two surrogates.

        With ``config.bonding`` the :func:`~featurizers.bonding.bonding_descriptors` follow, with
        ``config.ionic`` then the :func:`~featurizers.bonding.ionic_descriptors`. Looked up in
        ``feature_cache`` where it applies (:meth:`FeatureCache.lookup`).
        """
        formulas = list(formulas)
        cached = None if self.feature_cache is None else self.feature_cache.lookup(self, descriptors, formulas)
        return self._compute_features(descriptors, formulas) if cached is None else cached

    def _compute_features(self, descriptors: pd.DataFrame, formulas: list[str]) -> np.ndarray:
        x = descriptor_matrix(descriptors, formulas, self.gap_surrogate.columns_)
        dft = self.dft_table.reindex(formulas).to_numpy(float)
        has = np.isfinite(dft[:, 0]).astype(float)
        sur = [s.predict(descriptors, formulas) for s in (self.gap_surrogate, self.metal_surrogate)]
        bonding = [bonding_descriptors(formulas).to_numpy(float)] if self.config.bonding else []
        ionic = [ionic_descriptors(formulas).to_numpy(float)] if self.config.ionic else []
        return np.column_stack([x, has, dft, *sur, *bonding, *ionic]).astype(np.float32)

    def fit(self, descriptors: pd.DataFrame, formulas: Sequence[str], is_metal: Sequence[int]) -> MetalClassifier:
        """Fit on measured classes (1 = metal, 0 = non-metal), one per formula."""
        y = np.asarray(is_metal)
        formulas = list(formulas)
        if len(y) != len(formulas):
            raise ValueError(f"MetalClassifier: {len(formulas)} formulas but {len(y)} classes")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("MetalClassifier: classes must be 0 (non-metal) or 1 (metal)")
        if min((y == 0).sum(), (y == 1).sum()) < 5:
            raise ValueError(f"MetalClassifier: need >= 5 metals and >= 5 non-metals, got {(y == 1).sum()} and {(y == 0).sum()}")
        if len(set(formulas)) != len(formulas):
            raise ValueError("MetalClassifier: one class per formula (duplicates given)")
        self.fit_surrogates(descriptors)
        x = self.features(descriptors, formulas)
        c = self.config
        self.models_ = [_classifier(c, c.seed + b).fit(x, y.astype(int)) for b in range(c.bags)]
        return self

    def predict_proba(self, descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
        """P(metal) per formula, the mean over the bagged classifiers."""
        x = self.features(descriptors, formulas)
        return np.mean([_probability(m, x) for m in self.models_], axis=0)


def choose_threshold(probability: np.ndarray, is_metal: np.ndarray, cost_if_missed: np.ndarray,
                     cost_if_false: np.ndarray, *, grid: np.ndarray | None = None, one_se: bool = True) -> float:
    """Return the probability above which a row is called metal, minimising the band-gap error the calls add.

    Called a metal, a row's gap is 0: a non-metal then costs ``cost_if_false`` (its measured
    gap); called a non-metal, a metal costs ``cost_if_missed`` (the gap the regressor predicts
    for it). The summed cost over out-of-fold ``probability`` of training rows is minimised
    over ``grid`` (default 0.05 .. 0.95); ties go to the threshold nearest 0.5 (``one_se=False``:
    exact ties only).

    ``one_se`` (default): every threshold whose summed cost exceeds the minimum by less than one
    standard error of that excess (over rows) counts as tied. The cost curve is flat over a
    wide range of thresholds, and the exact minimum of one training set wanders across it;
    with calibrated probabilities and comparable costs 0.5 is the optimum, so the rule keeps
    it unless the data show a better threshold beyond their noise.
    """
    p = np.asarray(probability, float)
    y = np.asarray(is_metal).astype(bool)
    missed, false = np.asarray(cost_if_missed, float), np.asarray(cost_if_false, float)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2) if grid is None else np.asarray(grid, float)
    # per row and threshold: the cost that row adds when the calls are made at that threshold
    rows = np.where(y[None, :], missed[None, :] * (p[None, :] < grid[:, None]),
                    false[None, :] * (p[None, :] >= grid[:, None]))
    costs = rows.sum(axis=1)
    tolerance = np.full(len(grid), 1e-9)
    if one_se and len(p) > 1:
        excess = rows - rows[np.argmin(costs)]
        tolerance += np.sqrt(len(p)) * excess.std(axis=1, ddof=1)
    best = np.flatnonzero(costs <= costs.min() + tolerance)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


# ----------------------------------------------------------------------------- storage (no pickle)

_HEADER = "metal.json"


def save_metal(model: MetalClassifier, directory: Path, **extra) -> None:
    """Write ``model`` as JSON + LightGBM text files; ``extra`` (threshold, metrics) goes into the header."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for k, m in enumerate(model.models_):
        name = f"classifier_{k}.txt"
        (directory / name).write_text(m.booster_.model_to_string(), encoding="utf-8")
        files.append(name)
    state = {
        "config": asdict(model.config),
        "dft_table": {"index": [str(i) for i in model.dft_table.index],
                      **{c: [None if not np.isfinite(v) else float(v) for v in model.dft_table[c]] for c in DFT_METAL_COLUMNS}},
        "classifiers": files,
        "gap_surrogate": surrogate_state(model.gap_surrogate, directory, "surrogate_gap.txt"),
        "metal_surrogate": surrogate_state(model.metal_surrogate, directory, "surrogate_metal.txt"),
        "extra": extra,
    }
    write_header(directory / _HEADER, cls="MetalClassifier", files=[*files, "surrogate_gap.txt", "surrogate_metal.txt"],
                 indent=None, **state)


def load_metal(directory: Path) -> tuple[MetalClassifier, dict]:
    """Rebuild a :func:`save_metal` classifier; returns it and the header's ``extra``."""
    # LightGBM: only when a classifier is loaded
    import lightgbm

    directory = Path(directory)
    state = read_header(directory / _HEADER, classes=("MetalClassifier",),
                        required=["surrogate_gap.txt", "surrogate_metal.txt"], what="metal classifier", error=ValueError)
    if not set(state["classifiers"]) <= set(state["files"]):
        raise ValueError(f"{directory / _HEADER} does not list the sha256 of every classifier")
    table = state["dft_table"]
    dft_table = pd.DataFrame({c: np.array([np.nan if v is None else v for v in table[c]], dtype=float)
                              for c in DFT_METAL_COLUMNS}, index=pd.Index(table["index"], name="formula"))
    # a classifier saved before the bonding / ionic descriptors existed was fitted without them
    config = MetalConfig(**{"bonding": False, "ionic": False, **state["config"]})
    model = MetalClassifier(config, dft_table=dft_table,
                            gap_surrogate=surrogate_from_state(state["gap_surrogate"], directory),
                            metal_surrogate=surrogate_from_state(state["metal_surrogate"], directory))
    model.models_ = [lightgbm.Booster(model_str=(directory / name).read_text(encoding="utf-8"))
                     for name in state["classifiers"]]
    return model, state.get("extra", {})
