"""Shards on S3-compatible object storage, through DuckDB's httpfs extension.

A store keeps its DuckDB file on local disk and may keep its activation shards under
``s3://bucket/prefix`` (``Store(path, shards="s3://...")`` or ``INTERP_SHARDS=s3://...``).
The extension comes from the PyPI package ``duckdb-extension-httpfs`` (``pip install
'interp[s3]'``) and is loaded from its file, never downloaded at run time.

Credentials and endpoint come from the usual AWS variables: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``)
and, for S3-compatible services (MinIO, moto, R2, ...), ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (``http://host:port`` turns TLS off and uses path-style URLs;
``INTERP_S3_URL_STYLE=vhost`` overrides the style).

Objects cannot be renamed, so remote shards skip the ``.tmp`` step: each object is
written under its final key (a PUT is atomic), and the ``activations`` view only reads
objects listed in the ``shards`` manifest. An object of an interrupted commit is never
visible and is overwritten when the run resumes (part numbers come from the manifest).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pyarrow as pa

from store.rows import first_row

SCHEMES = ("s3://", "s3a://", "r2://", "gcs://", "gs://")
_local = threading.local()


class RemoteError(RuntimeError):
    """Object storage that cannot be used as configured; the message says what to set."""


def is_remote(root: str | os.PathLike) -> bool:
    return str(root).startswith(SCHEMES)


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel.lstrip("/")


def httpfs_path() -> Path:
    """The httpfs extension file shipped by the ``duckdb-extension-httpfs`` package."""
    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        raise RemoteError("shards on object storage need DuckDB's httpfs extension: "
                          f"pip install 'duckdb-extension-httpfs=={duckdb.__version__}' (or interp[s3])")
    base = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    path = base / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.exists():
        have = sorted(p.name for p in base.glob("v*"))
        raise RemoteError(f"duckdb-extension-httpfs has builds for {', '.join(have) or 'no version'}, "
                          f"not DuckDB {duckdb.__version__}: install duckdb-extension-httpfs=={duckdb.__version__}")
    return path


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def secret_sql(env: dict[str, str] | None = None) -> str:
    """A temporary DuckDB S3 secret built from the AWS environment variables."""
    env = dict(os.environ if env is None else env)
    opts = {"TYPE": "s3"}
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["KEY_ID"] = _sql_str(env["AWS_ACCESS_KEY_ID"])
        opts["SECRET"] = _sql_str(env.get("AWS_SECRET_ACCESS_KEY", ""))
    if env.get("AWS_SESSION_TOKEN"):
        opts["SESSION_TOKEN"] = _sql_str(env["AWS_SESSION_TOKEN"])
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["REGION"] = _sql_str(region)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not url.hostname:
            raise RemoteError(f"AWS_ENDPOINT_URL '{endpoint}' has no host: use e.g. http://127.0.0.1:9000")
        opts["ENDPOINT"] = _sql_str(url.netloc)
        opts["USE_SSL"] = "true" if url.scheme == "https" else "false"
        opts["URL_STYLE"] = _sql_str(env.get("INTERP_S3_URL_STYLE", "path"))
    elif env.get("INTERP_S3_URL_STYLE"):
        opts["URL_STYLE"] = _sql_str(env["INTERP_S3_URL_STYLE"])
    return "CREATE OR REPLACE TEMPORARY SECRET interp_s3 (" + ", ".join(f"{k} {v}" for k, v in opts.items()) + ")"


def configure(con: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs from its package file and install the S3 secret on this connection."""
    con.execute("SET autoinstall_known_extensions = false")
    try:
        con.execute(f"LOAD {_sql_str(str(httpfs_path()))}")
        con.execute(secret_sql())
    except duckdb.Error as e:
        raise RemoteError(f"cannot set up object storage: {str(e).splitlines()[0]}") from None


def connection() -> duckdb.DuckDBPyConnection:
    """A per-thread in-memory DuckDB connection with httpfs ready (for shard writes and reads)."""
    key = secret_sql()  # a changed environment (credentials, endpoint) gets a fresh connection
    cached = getattr(_local, "con", None)
    if cached is None or cached[0] != key:
        con = duckdb.connect()
        configure(con)
        _local.con = (key, con)
        return con
    return cached[1]


def _error(e: Exception, url: str) -> RemoteError:
    return RemoteError(f"object storage failed on {url}: {str(e).splitlines()[0]} "
                       "(check the bucket, AWS_* credentials and AWS_ENDPOINT_URL)")


def write_table(table: pa.Table, url: str) -> tuple[int, int]:
    """Write ``table`` as one Parquet object at ``url``; returns (rows, bytes)."""
    con = connection()
    con.register("_shard", table)
    try:
        row = first_row(con.execute(f"COPY _shard TO {_sql_str(url)} (FORMAT parquet, COMPRESSION uncompressed, "
                                    "RETURN_STATS true)"))
    except duckdb.Error as e:
        raise _error(e, url) from None
    finally:
        con.unregister("_shard")
    return int(row[1]), int(row[2])


def read_table(url: str, columns: list[str]) -> pa.Table:
    con = connection()
    cols = ", ".join(f'"{c}"' for c in columns)
    try:
        return con.execute(f"SELECT {cols} FROM read_parquet({_sql_str(url)})").to_arrow_table()
    except duckdb.Error as e:
        raise _error(e, url) from None


def write_value(url: str, value: str) -> None:
    """A one-value CSV object at ``url`` (not Parquet: the view's ``**/*.parquet`` must not see it)."""
    con = connection()
    try:
        con.execute(f"COPY (SELECT {_sql_str(value)} AS value) TO {_sql_str(url)} (FORMAT csv, HEADER true)")
    except duckdb.Error as e:
        raise _error(e, url) from None


def read_value(url: str) -> str:
    con = connection()
    try:
        return str(first_row(con.execute(f"SELECT value FROM read_csv({_sql_str(url)}, header = true, all_varchar = true)"))[0])
    except duckdb.Error as e:
        raise _error(e, url) from None


def list_objects(root: str, pattern: str = "**/*") -> list[str]:
    """Keys under ``root`` matching ``pattern`` (full URLs)."""
    con = connection()
    try:
        return [r[0] for r in con.execute("SELECT file FROM glob(?)", [join(root, pattern)]).fetchall()]
    except duckdb.Error as e:
        raise _error(e, root) from None


def object_rows(url: str) -> tuple[int, int]:
    """(rows, bytes) of a Parquet object, from its footer only."""
    con = connection()
    try:
        rows = first_row(con.execute("SELECT sum(num_rows) FROM parquet_file_metadata(?)", [url]))[0]
        size = first_row(con.execute("SELECT size FROM read_blob(?)", [url]))[0]
    except duckdb.Error as e:
        raise _error(e, url) from None
    return int(rows or 0), int(size)
