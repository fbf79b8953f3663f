"""serving/inference on a real local MLflow (SQLite in tmp): ``load_predictor`` (a version or the
champion), the Predictor's outputs, and ``ModelHolder.refresh`` swapping champions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from portfolio.core import registry
from portfolio.core.schema import validate_frame
from portfolio.core.serving.inference import ModelHolder, Predictor, load_predictor
from portfolio.core.settings import Settings
from tests.support import synthetic

SPEC = synthetic.CLASSIFIER
NAME = SPEC.name
ROWS = synthetic.make_frame(40, seed=7)
RECORDS = ROWS[list(SPEC.feature_names)].astype(object).where(ROWS.notna(), None).to_dict("records")


def test_load_predictor_loads_the_champion_or_the_version_asked_for(synth_versions: Settings) -> None:
    champion = load_predictor(SPEC, synth_versions)
    assert champion.version == "1" and champion.loaded.source == "registry"
    v2 = load_predictor(SPEC, synth_versions, version=2)
    assert v2.version == "2"
    assert load_predictor(SPEC, synth_versions, version="1").version == "1"


def test_load_predictor_without_a_champion_raises_no_champion(synth_versions: Settings) -> None:
    with pytest.raises(registry.NoChampionError, match="run `portfolio train unregistered`"):
        load_predictor(dataclasses.replace(SPEC, name="unregistered"), synth_versions)


@pytest.mark.parametrize("compile", [True, False], ids=["compiled", "pipeline"])
def test_predictor_outputs_are_the_models_probability_and_thresholded_label(
    synth_versions: Settings, compile: bool
) -> None:
    registry.configure(synth_versions)
    loaded = registry.load_version(SPEC, synth_versions, 1)
    predictor = Predictor(SPEC, loaded, compile=compile)
    assert predictor.compiled is compile and predictor.threshold == loaded.threshold
    assert predictor.output_columns == ["probability", "prediction"]
    expected = loaded.model.predict_proba(ROWS[list(SPEC.feature_names)])[:, 1]
    out = predictor.predict_records(RECORDS)
    assert len(out) == len(RECORDS) and set(out[0]) == {"probability", "prediction"}
    probs = np.array([o["probability"] for o in out])
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
    assert [o["prediction"] for o in out] == [int(p >= loaded.threshold) for p in probs]
    assert 0 < sum(o["prediction"] for o in out) < len(out)  # both labels occur: the threshold matters
    # The batch path gives the same outputs on validated rows, keeping their index.
    typed = validate_frame(ROWS, SPEC.fields).frame.set_axis(range(100, 140))
    frame = predictor.predict_frame(typed)
    assert list(frame.index) == list(range(100, 140))
    np.testing.assert_allclose(frame["probability"], probs, rtol=1e-9, atol=1e-12)
    assert frame["prediction"].tolist() == [o["prediction"] for o in out]


def test_model_holder_refresh_swaps_in_a_new_champion_only(synth_versions: Settings) -> None:
    holder = ModelHolder(SPEC, synth_versions)
    assert holder.predictor is None and holder.state == "loading"
    assert holder.load_now().version == "1" and holder.state == "ready"
    assert holder.refresh() is False  # champion unchanged: nothing reloaded
    first = holder.predictor
    try:
        registry.promote(NAME, 2)
        assert holder.refresh() is True
        assert holder.predictor is not first and holder.predictor.version == "2"  # type: ignore[union-attr]
        assert holder.refresh() is False
    finally:
        registry.promote(NAME, 1)
    assert holder.refresh() is True and holder.predictor.version == "1"  # type: ignore[union-attr]


def test_a_failed_refresh_keeps_serving_the_current_model(synth_versions: Settings) -> None:
    holder = ModelHolder(SPEC, synth_versions)
    holder.load_now()
    client = MlflowClient()
    good = registry.version_tags(NAME, 2)["sha256"]
    try:
        client.set_model_version_tag(NAME, "2", "sha256", "0" * 64)
        registry.promote(NAME, 2)
        with pytest.raises(registry.ModelIntegrityError):
            holder.refresh()
        assert holder.predictor is not None and holder.predictor.version == "1"
        assert holder.state == "ready" and holder.predictor.predict_records(RECORDS[:1])[0]["probability"] > 0
    finally:
        registry.promote(NAME, 1)
        client.set_model_version_tag(NAME, "2", "sha256", good)
