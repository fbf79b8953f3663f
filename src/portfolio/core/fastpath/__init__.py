"""The compiled inference path: a champion pipeline turned, at load time, into numpy code (and a
numba-compiled tree walk) that takes validated records straight to the model, without building a
pandas DataFrame.

Why not ONNX or treelite: the pipelines are made of a handful of well-understood scikit-learn
steps (imputer, scaler, one-hot encoder) plus tree ensembles. Reading the fitted parameters of
those steps into numpy arrays keeps parity exact (same float64 arithmetic, the trees' own float32
splits and summation order) and needs no converter for the custom feature steps; treelite's
interpreter (GTIL) took ~210 µs for one row of an 800-tree booster against ~60 µs for the first
numba walk here (~20 µs for the branch-free walk that replaced it), and differed from XGBoost by
$0.09. Service-specific feature steps join by implementing one method:

    transform_columns(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]

(the columnar twin of their ``transform``), and optionally declare ``derived_from`` (each column
they compute → the columns it reads; every other column passes through as the same array), which
lets explanations recompute only what a substitution changes. Anything the compiler does not
know raises ``NotCompilable``; the service then serves through the pipeline and says so in
``/model``.

Rooms: ``columns`` (records to typed numpy columns), ``encoders`` (a fitted ColumnTransformer
as array operations), ``trees`` (the numba tree walks of scikit-learn forests and XGBoost
boosters, and the estimators around them), ``pipeline`` (a whole champion pipeline compiled,
with the substitution shortcut explanations use).
"""
