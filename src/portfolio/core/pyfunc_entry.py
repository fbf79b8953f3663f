"""The logged model's code ("models from code", see ``mlflow_model``): MLflow runs this file to get
the pyfunc, so loading needs no pickle."""

import mlflow

from portfolio.core.mlflow_model import ServiceModel

mlflow.models.set_model(ServiceModel())
