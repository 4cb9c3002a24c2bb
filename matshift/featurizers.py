"""matshift's featurizers as matminer ``BaseFeaturizer`` objects, to drop into matminer pipelines.

>>> from pymatgen.core import Composition
>>> from matshift import CompositionDescriptors
>>> f = CompositionDescriptors()
>>> row = f.featurize(Composition("GaAs"))
>>> len(row) == len(f.feature_labels())
True
>>> f.feature_labels()[0]
'MagpieData minimum Number'

With pandas: ``f.featurize_dataframe(df, "composition")`` adds one column per label, as any
matminer featurizer does. The values equal the featurize stage's (the vectorised
:func:`featurizers.composition.composition_descriptors`, checked against matminer's own
Magpie, Stoichiometry and ValenceOrbital featurizers in the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matminer.featurizers.base import BaseFeaturizer

from featurizers.chemistry import FormulaError, parse_formula
from featurizers.composition import composition_descriptors, descriptor_labels
from featurizers.crystal_graph import CrystalGraphFeaturizer
from featurizers.settings import DESCRIPTOR_SETS, GraphSettings

__all__ = ["CompositionDescriptors", "CrystalGraph", "formula_of"]

_MAGPIE = (
    "@article{ward_general-purpose_2016, author = {Ward, Logan and Agrawal, Ankit and Choudhary, Alok and "
    "Wolverton, Christopher}, title = {A general-purpose machine learning framework for predicting properties of "
    "inorganic materials}, journal = {npj Computational Materials}, volume = {2}, pages = {16028}, year = {2016}, "
    "doi = {10.1038/npjcompumats.2016.28}}"
)
_MATMINER = (
    "@article{ward_matminer_2018, author = {Ward, Logan and others}, title = {Matminer: An open source toolkit for "
    "materials data mining}, journal = {Computational Materials Science}, volume = {152}, pages = {60--69}, "
    "year = {2018}, doi = {10.1016/j.commatsci.2018.05.018}}"
)
_CGCNN = (
    "@article{xie_crystal_2018, author = {Xie, Tian and Grossman, Jeffrey C.}, title = {Crystal Graph "
    "Convolutional Neural Networks for an Accurate and Interpretable Prediction of Material Properties}, "
    "journal = {Physical Review Letters}, volume = {120}, pages = {145301}, year = {2018}, "
    "doi = {10.1103/PhysRevLett.120.145301}}"
)
_MEGNET = (
    "@article{chen_graph_2019, author = {Chen, Chi and Ye, Weike and Zuo, Yunxing and Zheng, Chen and Ong, Shyue "
    "Ping}, title = {Graph Networks as a Universal Machine Learning Framework for Molecules and Crystals}, "
    "journal = {Chemistry of Materials}, volume = {31}, pages = {3564--3572}, year = {2019}, "
    "doi = {10.1021/acs.chemmater.9b01294}}"
)


def formula_of(item: Any) -> str:
    """Return a formula string for a formula, a pymatgen ``Composition`` or anything with ``.composition``."""
    comp = getattr(item, "composition", item)
    if isinstance(comp, str):
        return comp
    formula = getattr(comp, "formula", None)
    if not isinstance(formula, str):
        raise FormulaError(f"not a formula, Composition or Structure: {type(item).__name__}")
    return formula.replace(" ", "")


class CompositionDescriptors(BaseFeaturizer):
    """Magpie element statistics, stoichiometry p-norms and valence-orbital fractions of a composition.

    ``sets``: a subset of ``("magpie", "stoichiometry", "valence_orbital")`` (default: all, as
    the pipeline). ``featurize`` takes a ``Composition``, a formula string or a ``Structure``
    (its composition); an input that does not parse, or has an element without Magpie data,
    raises ``ValueError`` naming it (``featurize_dataframe(..., ignore_errors=True)`` turns
    that into NaNs, as with any matminer featurizer).
    """

    def __init__(self, sets: Sequence[str] = DESCRIPTOR_SETS) -> None:
        self.sets = tuple(sets)
        self._labels = descriptor_labels(self.sets)  # validates the sets
        self.set_n_jobs(1)  # vectorised already: a process pool only costs start-up

    def featurize(self, comp: Any) -> list[float]:
        formula = formula_of(comp)
        parse_formula(formula)  # FormulaError (a ValueError) names a bad formula
        result = composition_descriptors([formula], sets=self.sets)
        if result.failures:
            raise ValueError(f"{formula!r}: {result.failures[0].reason}")
        return [float(v) for v in result.frame.iloc[0, 1:]]

    def feature_labels(self) -> list[str]:
        return list(self._labels)

    def citations(self) -> list[str]:
        return [_MAGPIE, _MATMINER]

    def implementors(self) -> list[str]:
        return ["matshift developers"]


class CrystalGraph(BaseFeaturizer):
    """The symmetry-invariant crystal graph of a structure: one feature, a PyTorch Geometric ``Data``.

    Nodes are the atoms of the spglib-standardised primitive cell with element embeddings,
    edges the neighbours within ``cutoff`` Å under periodic boundary conditions with
    Gaussian-expanded distances; the space group and crystal system are graph attributes.
    Keyword arguments are :class:`featurizers.settings.GraphSettings` (default: the featurize
    stage's defaults, so the graphs are those the models were trained on). A structure that
    cannot be featurized raises ``ValueError`` naming the step that failed.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = GraphSettings(**settings)
        self._featurizer = CrystalGraphFeaturizer.from_settings(self.settings, on_error="raise")
        self.set_n_jobs(1)  # a Data object per row: a process pool would pickle every graph back

    def featurize(self, structure: Any) -> list[Any]:
        return [self._featurizer.featurize(structure, structure_id=formula_of(structure))]

    def feature_labels(self) -> list[str]:
        return ["crystal_graph"]

    def citations(self) -> list[str]:
        return [_CGCNN, _MEGNET] if self.settings.embedding == "megnet16" else [_CGCNN]

    def implementors(self) -> list[str]:
        return ["matshift developers"]
