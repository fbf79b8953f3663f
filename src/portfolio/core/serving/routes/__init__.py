"""The API's routes by subject, each a router over the app's ``ServingContext``: ``ops`` (health,
readiness, model card data, metrics), ``predict``, ``explain`` and ``admin``."""
