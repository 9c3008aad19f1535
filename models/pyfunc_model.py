"""Model-from-code entry point for `mlflow.pyfunc.log_model(python_model=<this file>)`.

Logging the model by code path instead of a pickled object means nothing is unpickled at load."""

from mlflow.models import set_model

from recsys.models.pyfunc import RecsysModel

set_model(RecsysModel())
