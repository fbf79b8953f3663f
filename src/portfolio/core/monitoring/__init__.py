"""Monitoring of a served model's inputs and outputs against what it was trained on.

- ``reference``: the training profile logged with each model, and how it is found again;
- ``drift``: the statistics (PSI, KS, chi-square) of one field or a batch against it;
- ``report``: ``portfolio drift``, a CSV batch as a JSON report and an HTML page;
- ``live``: the API's window of recent requests and its Prometheus gauges.
"""
