"""Serving a champion: the API (``api``), the predictor that turns validated records into outputs
(``inference``), worker processes with a socket each (``workers``) and CSV batch scoring
(``batch``)."""
