"""The matshift library: optimal transport, networks, learners, evaluation and serving.

Layers (checked by import-linter, see pyproject.toml), lowest first:

* :mod:`models._io` (atomic writes, hashes, the model-file format; re-exported here) and
  :mod:`models.properties` (the property registry and the polymorph rule);
* :mod:`models.transport` (optimal transport) and :mod:`models.nets` (neural networks),
  independent of each other;
* :mod:`models.learners` (training, baselines, the stacked model, fitting a property);
* :mod:`models.evaluation` (leak-free protocols) and :mod:`models.serving` (predictors,
  MLflow packaging), independent of each other.

Library code: takes arguments, never reads params.yaml, environment variables or globals.
"""

from models import _io
from models._io import *

__all__ = [*_io.__all__]
