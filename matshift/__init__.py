"""matshift's Python API: the command line's predictions and featurizers, in a notebook.

>>> import matshift
>>> model = matshift.load_model("band_gap")              # doctest: +SKIP
>>> table = model.predict(["GaAs", "Cu3Au", "not a formula"])  # doctest: +SKIP

* :func:`load_model`: a property name (the pipeline's model, read as ``matshift predict``
  reads it), a model directory, or an MLflow model URI (``models:/matshift-band_gap/1``: the
  packaged predictor the model server runs);
* :meth:`Model.predict`: formulas, pymatgen ``Composition``/``Structure`` objects, CIF paths
  or a DataFrame in; a DataFrame with the columns of ``matshift predict --output x.csv``
  out, one row per input, the invalid ones with their ``error`` and no number;
* :func:`featurize`: the composition descriptors or crystal graphs the models use; the same
  featurizers as matminer ``BaseFeaturizer`` objects are :class:`CompositionDescriptors`
  and :class:`CrystalGraph`.
"""

from __future__ import annotations

from matshift.api import COLUMNS, Model, ModelNotFoundError, featurize, load_model
from matshift.featurizers import CompositionDescriptors, CrystalGraph

__all__ = ["COLUMNS", "CompositionDescriptors", "CrystalGraph", "Model", "ModelNotFoundError", "featurize",
           "load_model"]
