"""Spark reads an exported store: the README's layer-cosine query, written in Spark SQL over the
hive-partitioned export, gives the same numbers as DuckDB over the live store.

pyspark runs in local mode on the JDK `.ci/run` installs when missing; the test skips with the
reason when either is absent here, and CI has both.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from interp.capture.capture import CaptureCfg, capture
from store.export import export_store

pytestmark = pytest.mark.slow  # a JVM starts: about 30 s

TEXTS = ["the cat sat on the mat", "hi there", "a longer prompt about gardens and rivers", "numbers 1 2 3",
         "what is the capital of France?", "tell me a story about a fox", "rain again today"]

README_QUERY = """
SELECT a.layer, avg(list_cosine_similarity(a.vec, b.vec)) AS cos_next
FROM activations a JOIN activations b
  ON a.run_id = b.run_id AND a.prompt_id = b.prompt_id AND a.hook = b.hook
 AND a.reduce = b.reduce AND b.layer = a.layer + 1
WHERE a.hook = 'resid_post' AND a.reduce = 'last'
GROUP BY a.layer ORDER BY a.layer
"""

# The same query in Spark SQL: Spark has no cosine function, so the dot product and the norms
# are folded with its higher-order functions, in double precision.
SPARK_QUERY = """
SELECT a.layer, avg(
    aggregate(zip_with(a.vec, b.vec, (x, y) -> CAST(x AS DOUBLE) * y), 0D, (s, v) -> s + v)
    / sqrt(aggregate(a.vec, 0D, (s, v) -> s + CAST(v AS DOUBLE) * v))
    / sqrt(aggregate(b.vec, 0D, (s, v) -> s + CAST(v AS DOUBLE) * v))) AS cos_next
FROM activations a JOIN activations b
  ON a.run_id = b.run_id AND a.prompt_id = b.prompt_id AND a.hook = b.hook
 AND a.reduce = b.reduce AND b.layer = a.layer + 1
WHERE a.hook = 'resid_post' AND a.reduce = 'last'
GROUP BY a.layer ORDER BY a.layer
"""


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'interp[dev]')")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: .ci/run installs Debian's default-jre-headless")
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("interp-export-test")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    assert pyspark.__version__
    yield session
    session.stop()


def test_spark_sql_on_the_export_equals_duckdb_on_the_store(spark, tiny, store, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"q{i}", "text": t}) for i, t in enumerate(TEXTS)))
    capture(tiny, store, CaptureCfg(prompts=str(prompts), hooks="resid_post", positions="last,mean",
                                    backend="torch", batch_size=3, flush_mb=0), progress=False)
    with store.connect(read_only=True) as con:
        want = con.execute(README_QUERY).fetchall()
    out = tmp_path / "export"
    export_store(store, out)

    frame = spark.read.option("basePath", str(out / "activations")).parquet(str(out / "activations"))
    assert {"run_id", "hook", "layer", "prompt_id", "reduce", "vec"} <= set(frame.columns)
    frame.createOrReplaceTempView("activations")
    got = [(int(r["layer"]), float(r["cos_next"])) for r in spark.sql(SPARK_QUERY).collect()]

    assert [layer for layer, _ in got] == [layer for layer, _ in want] == list(range(tiny.n_layers - 1))
    np.testing.assert_allclose([c for _, c in got], [c for _, c in want], rtol=1e-5, atol=1e-6)
    # the numbers are real cosines of distinct states, not a constant the two engines could share
    assert len({round(c, 6) for _, c in want}) == len(want)
    assert spark.sql("SELECT count(*) AS n FROM activations").collect()[0]["n"] == 2 * len(TEXTS) * tiny.n_layers
