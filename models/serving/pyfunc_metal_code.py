"""The MLflow model-from-code entry of the registered metal classifier (``matshift-metal``).

As :mod:`models.serving.pyfunc_code`: MLflow stores this file, not a pickled object; the
classifier files are read by :class:`models.serving.MetalPredictor` after their sha256 check.
"""

from mlflow.models import set_model

from models.serving.pyfunc import MetalPyfunc

set_model(MetalPyfunc())
