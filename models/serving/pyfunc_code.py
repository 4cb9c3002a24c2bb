"""The MLflow model-from-code entry: MLflow stores this file instead of a pickled Python object.

``mlflow.pyfunc.log_model(python_model=<this file>)`` records the model as code, so loading
the registered model unpickles nothing; the ensemble files it wraps are read by
:class:`models.serving.EnsemblePredictor` after their sha256 manifest is verified.
"""

from mlflow.models import set_model

from models.serving.pyfunc import MatshiftPyfunc

set_model(MatshiftPyfunc())
