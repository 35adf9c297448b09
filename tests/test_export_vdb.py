"""`siglip export --to milvus / --to lancedb` (siglip/export/milvus.py, lancedb.py, database.py): the
rows in Milvus Lite and a local LanceDB table, searched with each engine's own client by the query
docs/search-at-scale.md documents, give the same top-10 as our exact search; the schema and dim are
the index's; another dim is an error naming both; a `siglip export` killed with SIGKILL halfway through
a batch and run again holds every row once, with the index's embeddings."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import siglip.index
from siglip.cli import main
from tests.index_helpers import make_index, unit_rows

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytest.importorskip("lancedb")

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("milvus", "lancedb")


def items_for(n: int) -> list[dict]:
    items = [{"path": f"photos/é{i}.jpg", "caption": f"a photo ★ {i}", "id": str(i)} for i in range(n)]
    items[3] = {"shard": "s-0.tar", "key": "k3", "id": "s-0.tar::k3"}  # path shard::key, no caption
    return items


def index_of(tmp_path: Path, n: int = 600, d: int = 32, seed: int = 0, name: str = "idx") -> Path:
    return make_index(tmp_path / name, unit_rows(n, d, seed), items=items_for(n))


def uri_for(tmp_path: Path, engine: str) -> str:
    return str(tmp_path / ("m.db" if engine == "milvus" else "lance"))


def export_cli(index: Path, engine: str, uri: str, *extra: str) -> None:
    """`siglip export` in this process (its --json report goes to stdout)."""
    assert main(["export", str(index), "--to", engine, "--uri", uri, "--collection", "photos", "--json", *extra]) == 0


def run_export(index: Path, engine: str, uri: str, *extra: str) -> dict:
    """A real `siglip export` in its own process; its --json report."""
    cmd = [sys.executable, "-m", "siglip", "export", str(index), "--to", engine, "--uri", uri, "--table", "photos"]
    out = subprocess.run([*cmd, "--json", *extra], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SIGLIP_DEBUG": "1"}


# --- each engine's documented query (docs/search-at-scale.md, "Moving to a vector database") ---------


def milvus_top(uri: str, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    client.load_collection("photos")
    hits = client.search("photos", data=[q for q in queries], limit=k, search_params={"metric_type": "IP"})
    client.close()
    ids = np.array([[h["id"] for h in row] for row in hits])
    return np.array([[h["distance"] for h in row] for row in hits]), ids


def lancedb_top(uri: str, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    import lancedb

    table = lancedb.connect(uri).open_table("photos")
    rows = [table.search(q).distance_type("dot").limit(k).select(["id", "path"]).to_list() for q in queries]
    ids = np.array([[r["id"] for r in row] for row in rows])
    return np.array([[1 - r["_distance"] for r in row] for row in rows]), ids  # dot distance = 1 - q.x


TOP = {"milvus": milvus_top, "lancedb": lancedb_top}


def all_rows(engine: str, uri: str) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Every row in the collection, sorted by id: ids, embeddings, paths, captions."""
    fields = ["id", "embedding", "path", "caption"]
    if engine == "milvus":
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        client.load_collection("photos")
        count = client.query("photos", filter="", output_fields=["count(*)"])[0]["count(*)"]
        rows = []  # a query returns 16384 rows at most: pages by id (ids past the count would show in it)
        for a in range(0, count + 8192, 8192):
            rows += client.query("photos", filter=f"id >= {a} and id < {a + 8192}", output_fields=fields, limit=16384)
        rows += client.query("photos", filter=f"id < 0 or id >= {a + 8192}", output_fields=fields, limit=16384)
        client.close()
    else:
        import lancedb

        rows = lancedb.connect(uri).open_table("photos").to_arrow().to_pylist()
    rows.sort(key=lambda r: r["id"])
    emb = np.array([np.asarray(r["embedding"], np.float32) for r in rows])
    return np.array([r["id"] for r in rows]), emb, [r["path"] for r in rows], [r["caption"] for r in rows]


def assert_holds_index(engine: str, uri: str, index: Path) -> None:
    """Every row once (ids == range(n), no duplicate), the index's float32 embeddings, paths, captions."""
    gen = siglip.index.open(index).current()
    ids, emb, paths, captions = all_rows(engine, uri)
    assert ids.tolist() == list(range(gen.count))
    assert np.array_equal(emb, np.asarray(gen.rows, dtype=np.float32))
    assert paths[3] == "s-0.tar::k3" and captions[3] == "" and paths[7] == "photos/é7.jpg"
    assert captions[7] == "a photo ★ 7"


# --- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_the_engines_search_gives_the_exact_top10(tmp_path, engine):
    index, uri = index_of(tmp_path), uri_for(tmp_path, engine)
    export_cli(index, engine, uri, "--batch-rows", "128")
    assert_holds_index(engine, uri, index)
    queries = unit_rows(20, 32, seed=9)
    want_scores, want_ids = siglip.index.open(index).search(queries, 10, exact=True)
    scores, ids = TOP[engine](uri, queries)
    assert np.array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-3)


def test_milvus_collection_schema(tmp_path):
    from pymilvus import DataType, MilvusClient

    uri = uri_for(tmp_path, "milvus")
    export_cli(index_of(tmp_path, n=50), "milvus", uri)
    client = MilvusClient(uri)
    info = client.describe_collection("photos")
    fields = {f["name"]: f for f in info["fields"]}
    assert not info["auto_id"] and fields["id"]["type"] == DataType.INT64 and fields["id"]["is_primary"]
    assert fields["embedding"]["type"] == DataType.FLOAT_VECTOR and fields["embedding"]["params"]["dim"] == 32
    assert fields["path"]["type"] == fields["caption"]["type"] == DataType.VARCHAR
    index = client.describe_index("photos", "embedding")
    assert (index["index_type"], index["metric_type"]) == ("FLAT", "IP")
    client.close()


def test_lancedb_table_schema(tmp_path):
    import lancedb
    import pyarrow as pa

    uri = uri_for(tmp_path, "lancedb")
    export_cli(index_of(tmp_path, n=50), "lancedb", uri)
    schema = lancedb.connect(uri).open_table("photos").schema
    assert schema.field("id").type == pa.int64() and schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert schema.field("path").type == schema.field("caption").type == pa.string()


@pytest.mark.parametrize("engine", ENGINES)
def test_another_dim_or_other_rows_is_an_error_naming_it(tmp_path, engine, capsys):
    uri = uri_for(tmp_path, engine)
    export_cli(index_of(tmp_path, n=40), engine, uri)
    capsys.readouterr()
    i16 = index_of(tmp_path, n=40, d=16, name="i16")
    assert main(["export", str(i16), "--to", engine, "--uri", uri, "--collection", "photos"]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"{engine} (collection|table) 'photos' at \S+ has embedding dim 32, the index has 16", err), err
    other = index_of(tmp_path, n=40, seed=5, name="other")  # same dim, other rows
    assert main(["export", str(other), "--to", engine, "--uri", uri, "--collection", "photos"]) == 1
    assert "holds other rows than" in capsys.readouterr().err
    assert main(["export", str(index_of(tmp_path, n=30, name="short")), "--to", engine, "--uri", uri,
                 "--collection", "photos"]) == 1  # fmt: skip
    assert "holds 10 rows with ids past the 30 rows" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ENGINES)
def test_a_collection_in_another_schema_is_an_error_naming_the_field(tmp_path, engine, capsys):
    uri = uri_for(tmp_path, engine)
    if engine == "milvus":
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        client.create_collection("photos", dimension=32)  # the quick setup: fields id and vector
        client.close()
        want = "field 'embedding' is missing, expected FLOAT_VECTOR"
    else:
        import lancedb
        import pyarrow as pa

        schema = pa.schema([pa.field("id", pa.int64()), pa.field("embedding", pa.list_(pa.float64(), 32))])
        lancedb.connect(uri).create_table("photos", schema=schema)
        want = "field 'embedding' is fixed_size_list<item: double>[32], expected fixed_size_list<item: float>[32]"
    assert main(["export", str(index_of(tmp_path, n=10)), "--to", engine, "--uri", uri, "--table", "photos"]) == 1
    err = capsys.readouterr().err
    assert f"'photos' at {uri} is not in the export schema: {want}" in err, err


@pytest.mark.parametrize("engine", ENGINES)
def test_a_grown_index_exports_only_its_new_rows(tmp_path, engine, capsys):
    rows = unit_rows(90, 32)
    uri = uri_for(tmp_path, engine)
    make_index(tmp_path / "idx", rows[:60], items=items_for(60))
    export_cli(tmp_path / "idx", engine, uri)
    make_index(tmp_path / "idx", rows, gen=2, items=items_for(90))  # siglip embed appended 30 rows
    capsys.readouterr()
    export_cli(tmp_path / "idx", engine, uri)
    report = json.loads(capsys.readouterr().out)
    assert (report["resumed_from"], report["written"], report["rows"]) == (60, 30, 90)
    assert_holds_index(engine, uri, tmp_path / "idx")


# --- resume after kill -9 --------------------------------------------------------------------------------

# `siglip export` in a child whose engine write call number CALL writes only half its rows (the first or
# the second half) and then sends the process SIGKILL: a batch half visible, as a kill during a write
# can leave it, at a chosen place
KILLED_MIDWAY = r"""
import os, signal, sys
engine, call, half = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if engine == "milvus":
    from pymilvus import MilvusClient as cls
    name, at = "insert", 1  # insert(self, collection_name, data)
else:
    from lancedb.table import LanceTable as cls
    name, at = "add", 0  # add(self, data): a pyarrow Table
orig, calls = getattr(cls, name), [0]
def write(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == call:
        args, n = list(args), len(args[at]) // 2
        args[at] = args[at][:n] if half == "first" else args[at][n:]
        orig(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, *args, **kwargs)
setattr(cls, name, write)
from siglip.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("half", ["second", pytest.param("first", marks=pytest.mark.slow)])
def test_killed_halfway_through_a_batch_then_rerun_holds_every_row_once(tmp_path, engine, half):
    """Killed (SIGKILL) after half of the third batch (rows 200..299) was written: with the second half
    there (250..299, not 200..249) the rerun deletes those 50 and goes on from 200; with the first half
    it goes on from 250. Either way every id once, the index's embeddings. Resuming from the count of
    rows present instead writes 250..299 twice and 200..249 never (tried: this test then fails)."""
    index, uri = index_of(tmp_path), uri_for(tmp_path, engine)
    argv = ["export", str(index), "--to", engine, "--uri", uri, "--collection", "photos", "--batch-rows", "100"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MIDWAY, engine, "3", half, *argv], cwd=ROOT, env=child_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    report = run_export(index, engine, uri, "--batch-rows", "100")
    start, stray = (200, 50) if half == "second" else (250, 0)
    assert (report["resumed_from"], report["stray_rows_deleted"], report["written"]) == (start, stray, 600 - start)
    assert_holds_index(engine, uri, index)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_killed_at_any_moment_then_rerun_holds_every_row_once(tmp_path, engine):
    """The plain command, killed (SIGKILL) from outside once its progress passes a quarter of the rows,
    wherever it then is (reading, converting, inside the engine's write), and run again."""
    n = 20000
    index, uri = index_of(tmp_path, n=n), uri_for(tmp_path, engine)
    cmd = [sys.executable, "-m", "siglip", "export", str(index), "--to", engine, "--uri", uri, "--table", "photos"]
    proc = subprocess.Popen([*cmd, "--batch-rows", "500"], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 300
    while time.monotonic() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
        done = [int(m) for m in re.findall(rb"(\d+)/%d" % n, seen)]
        if done and max(done) >= n // 4 or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, seen[-3000:]
    report = run_export(index, engine, uri, "--batch-rows", "500")
    assert 0 < report["resumed_from"] < n, report
    assert_holds_index(engine, uri, index)


def test_milvus_long_path_is_an_error_naming_its_row_and_a_long_caption_is_cut(tmp_path, capsys):
    items = items_for(20)
    items[5]["caption"] = "é" * 40000  # 80,000 bytes: over VARCHAR(65535), cut at a character boundary
    make_index(tmp_path / "idx", unit_rows(20, 8), items=items)
    uri = uri_for(tmp_path, "milvus")
    export_cli(tmp_path / "idx", "milvus", uri)
    assert json.loads(capsys.readouterr().out)["captions_cut"] == 1
    _, _, _, captions = all_rows("milvus", uri)
    assert captions[5] == "é" * 32767 and captions[6] == "a photo ★ 6"
    items[7]["path"] = "d/" * 2100 + "x.jpg"
    make_index(tmp_path / "long", unit_rows(20, 8), items=items)
    assert main(["export", str(tmp_path / "long"), "--to", "milvus", "--uri", uri, "--collection", "other"]) == 1
    assert (
        "long: row 7's path is 4205 bytes, over the 4096 bytes of milvus collection 'other'" in capsys.readouterr().err
    )


@pytest.mark.parametrize("engine,module", [("milvus", "pymilvus"), ("lancedb", "lancedb")])
def test_a_missing_client_names_the_extra(tmp_path, engine, module, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    assert main(["export", str(index_of(tmp_path, n=5)), "--to", engine, "--uri", uri_for(tmp_path, engine)]) == 1
    assert f"pip install 'siglip[{engine}]'" in capsys.readouterr().err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_milvus_server_url(tmp_path):
    """--uri http://host:port: the client speaking to a server in another process (Milvus Lite's own
    gRPC server, `python -m milvus_lite server`, the same API as a Milvus server), not in this one."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "srv"), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        index = index_of(tmp_path, n=300)
        for _ in range(100):  # up when a client connects
            try:
                import pymilvus

                pymilvus.MilvusClient(uri, timeout=1).close()
                break
            except Exception:
                time.sleep(0.2)
        export_cli(index, "milvus", uri, "--batch-rows", "64")
        assert_holds_index("milvus", uri, index)
        queries = unit_rows(20, 32, seed=9)
        want_scores, want_ids = siglip.index.open(index).search(queries, 10, exact=True)
        scores, ids = milvus_top(uri, queries)
        assert np.array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, atol=1e-3)
        assert (tmp_path / "srv" / "collections" / "photos").is_dir()  # the rows are the server's
    finally:
        server.kill()
        server.wait()
