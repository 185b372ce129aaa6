"""What the worker's process loads: each import below once cost it tens of MiB of RSS.

Each check runs in a fresh interpreter (a subprocess), since this test process has imported
everything already. docs/PERFORMANCE.md ("Session 8: a lighter process") has the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def _loaded_after(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` once ``code`` has run in a fresh interpreter."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ}, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    return {m.split(".")[0] for m in modules} | set(modules)


# A worker on a SQLite registry (the default) with the default detectors (ADWIN).
WORKER_IMPORTS = """
import driftline.streams.app
from driftline.streams.core.detectors import ChangeDetectorBank
ChangeDetectorBank().update("v1:score", __import__("numpy").linspace(0, 1, 100))
"""


def test_worker_imports_no_pandas_psycopg_or_river_drift_package() -> None:
    loaded = _loaded_after(WORKER_IMPORTS)
    assert "driftline.streams.app" in loaded and "river.drift.adwin" in loaded  # the check can see modules
    for heavy in ("pandas", "psycopg", "river.drift", "river.stats", "scipy.stats", "scipy.optimize", "aiohttp.web"):
        assert heavy not in loaded, f"the worker's imports pull in {heavy} again"


def test_warehouse_writes_and_reads_without_pandas(tmp_path: object) -> None:
    loaded = _loaded_after(
        """
        import datetime, uuid
        import numpy as np
        from driftline.streams.warehouse import Warehouse
        with Warehouse.connect("chdb://:memory:?database=imports", migrate=True) as wh:
            wh.command(
                "CREATE TABLE imports.t (a Int64, m Map(String, Float64), ts DateTime64(3, 'UTC'),"
                " n Nullable(Float64), s Array(String), d Date, u UUID) ENGINE = Memory"
            )
            wh.insert("t", {"a": np.arange(2), "m": [{"k": 1.5}, {}], "ts": np.array([0, 1_000]),
                            "n": [None, 2.0], "s": [["x"], []], "d": [datetime.date(2026, 1, 2)] * 2,
                            "u": [uuid.UUID(int=1)] * 2})
            rows = wh.query_rows("SELECT * FROM imports.t ORDER BY a")
            assert rows[0]["m"] == {"k": 1.5} and rows[1]["m"] == {} and rows[0]["n"] is None, rows
            assert rows[1]["ts"] == datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc), rows
            assert wh.query_arrow("SELECT m FROM imports.t").num_rows == 2
        """
    )
    assert "pandas" not in loaded


def test_query_df_still_returns_pandas() -> None:
    _loaded_after(
        """
        import numpy as np
        from driftline.streams.warehouse import Warehouse
        with Warehouse.connect("chdb://:memory:?database=frames", migrate=True) as wh:
            wh.command("CREATE TABLE frames.t (a Int64, m Map(String, Float64)) ENGINE = Memory")
            wh.insert("t", {"a": np.arange(3), "m": [{"k": 1.0}] * 3})
            frame = wh.query_df("SELECT a, m FROM frames.t ORDER BY a")
            assert type(frame).__name__ == "DataFrame" and frame["a"].tolist() == [0, 1, 2], frame
            import pandas as pd
            wh.insert("t", {"a": pd.Series([7]), "m": [{"k": 2.0}]})  # pandas values once pandas is there
            assert wh.query_rows("SELECT max(a) AS a FROM frames.t") == [{"a": 7}]
        """
    )


def test_worker_arrow_tables_without_pandas() -> None:
    """The worker's Arrow tables load no pandas; pandas still works once something imports it."""
    _loaded_after(
        """
        import sys
        import numpy as np
        import pyarrow as pa
        from driftline.streams.app import pyarrow_without_pandas
        assert pyarrow_without_pandas()
        ids = pa.array(["e1", "e2"], type=pa.string())
        scores = pa.array(np.array([0.5, np.nan]), mask=np.isnan(np.array([0.5, np.nan])))
        index = pa.array(np.array([0, 0], dtype=np.int32))
        names = pa.DictionaryArray.from_arrays(index, pa.array(["x"], type=pa.string()))
        offsets = pa.array(np.array([0, 1, 1], dtype=np.int32))
        maps = pa.MapArray.from_arrays(offsets, names.dictionary_decode()[:1], scores[:1])
        table = pa.table({"id": ids, "score": scores, "m": maps})
        assert "pandas" not in sys.modules
        import pandas as pd
        assert table.to_pandas()["id"].tolist() == ["e1", "e2"]
        assert pa.types.is_dictionary(pa.array(pd.Series(pd.Categorical(["a", "b"]))).type)
        """
    )


@pytest.mark.parametrize("first", ["alone", "package"])
def test_detector_loaded_alone_is_river_drift_class(first: str) -> None:
    """A state pickled with the detector loaded alone resumes with ``river.drift`` imported, and back."""
    _loaded_after(
        f"""
        import pickle
        import numpy as np
        if {first!r} == "package":
            import river.drift
        from driftline.streams.core.detectors import DETECTORS, ChangeDetectorBank
        x = np.r_[np.zeros(2_000), np.ones(2_000)]
        whole = [e.index for e in ChangeDetectorBank().update("k", x)]
        first = ChangeDetectorBank()
        first.update("k", x[:1_000])
        state = first.stream_state("k")
        import river.drift
        assert DETECTORS["adwin"] is river.drift.ADWIN
        assert type(pickle.loads(state)["detectors"]["adwin"]) is river.drift.ADWIN
        resumed = ChangeDetectorBank()
        assert resumed.restore_stream("k", state) == ["adwin"]
        assert [e.index + 1_000 for e in resumed.update("k", x[1_000:])] == whole == [2_015]
        """
    )


def test_psycopg_errors_stop_a_batch_once_a_postgresql_registry_loaded_psycopg() -> None:
    _loaded_after(
        """
        import sys
        from driftline.streams.worker import infrastructure_errors
        assert "psycopg" not in sys.modules
        assert not any(e.__module__.startswith("psycopg") for e in infrastructure_errors())
        import psycopg
        assert psycopg.OperationalError in infrastructure_errors()
        """
    )
