"""The trained model's Prefect result: pickled straight into its own file (`tasks/caching.StreamedPickle`),
the record holding only the file's name; Prefect finds the serializer by its type when it reads a record."""

import json

import numpy as np
import pytest
from prefect.serializers import Serializer

from recsys.tasks.caching import StreamedPickle


def test_streamed_pickle_round_trip_through_a_file_named_in_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    serializer = Serializer(type="recsys-streamed-pickle")  # how Prefect rebuilds it from a stored record
    assert isinstance(serializer, StreamedPickle)
    obj = ({"weights": np.arange(1_000_000, dtype=np.float32)}, "ranker")
    blob = serializer.dumps(obj)
    assert len(blob) < 100  # the record holds a name, not the pickle
    files = list((tmp_path / "prefect" / "results" / "objects").iterdir())
    assert [f.name for f in files] == [json.loads(blob)["file"]] and files[0].stat().st_size > 4_000_000
    back = serializer.loads(blob)
    np.testing.assert_array_equal(back[0]["weights"], obj[0]["weights"])
    assert back[1] == "ranker"
    files[0].unlink()
    with pytest.raises(FileNotFoundError):  # Prefect's ResultStore.exists takes this as no cached result: it retrains
        serializer.loads(blob)
