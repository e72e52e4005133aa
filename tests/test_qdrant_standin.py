"""tests/vm/qdrant_standin.py, the Qdrant server of the VM tests, as a real subprocess on a
loopback port with an API key: the daemon's own VectorStore (qdrant-client over REST) and
gateway, with the bundled model, ingest, search, learn, GC and survive a restart through
it, and a request without the key or with a wrong one is refused as Qdrant refuses it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from aistack.config import validate_config
from aistack.embedding import Embedder
from aistack.ingest.jsonl import Document, ingest, read_documents
from aistack.stores.private_postgres import free_port
from aistack.stores.qdrant import QdrantUnavailable, VectorStore
from aistack.stores.solutions import COLLECTION
from tests.conftest import CORPUS
from tests.learning import LearningStore

ROOT = Path(__file__).parents[1]
KEY = "0f3c9a7e5b2d4c6a8e1f3b5d7a9c2e4f"
MISSING_KEY = "Must provide an API key or an Authorization bearer token"
WRONG_KEY = "Invalid API key or JWT"


class StandIn:
    """One stand-in process: its settings file as services.qdrant writes it (YAML), its
    storage, and its stderr (what the journal would hold)."""

    def __init__(
        self,
        directory: Path,
        *,
        env_key: str | None = KEY,
        file_key: str | None = None,
        config_name: str = "config.yaml",
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.storage = directory / "storage"
        self.env_key = env_key
        self.key = env_key or file_key
        self.config_path = directory / config_name
        self.log_path = directory / "qdrant.log"
        self.process: subprocess.Popen[bytes] | None = None
        if config_name.endswith(".json"):
            service: dict[str, Any] = {"host": "127.0.0.1", "http_port": self.port}
            if file_key is not None:
                service["api_key"] = file_key
            data = {"service": service, "storage": {"storage_path": str(self.storage)}}
            self.config_path.write_text(json.dumps(data))
        else:
            key_line = f"  api_key: {file_key}\n" if file_key is not None else ""
            self.config_path.write_text(
                "cluster:\n  enabled: false\n"
                "service:\n"
                f"{key_line}"
                "  enable_cors: true\n  grpc_port: 6334\n  host: 127.0.0.1\n"
                f"  http_port: {self.port}\n  max_request_size_mb: 32\n"
                "storage:\n  on_disk_payload: true\n  optimizers:\n    max_segment_size_kb: null\n"
                f"  snapshots_path: {directory / 'snapshots'}\n"
                f"  storage_path: {self.storage}\n"
                "telemetry_disabled: true\n"
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.vm.qdrant_standin", "--config-path"]

    def start(self, command: list[str] | None = None, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QDRANT__")}
        if self.env_key is not None:
            env["QDRANT__SERVICE__API_KEY"] = self.env_key
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*(command or self.command()), str(self.config_path)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        mark = self.log().count("listening on")
        while self.log().count("listening on") == mark:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"the stand-in exited {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the stand-in did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connect(self, key: str | None = None) -> VectorStore:
        """The daemon's store as `qdrant.url` + `qdrant.api_key_file` configure it."""
        key_file = self.directory / "api-key"
        key_file.write_text((key or self.key or "") + "\n")
        config = validate_config(
            {"qdrant": {"url": self.url, "api_key_file": str(key_file)}}
        ).qdrant
        # Over loopback, qdrant-client's "insecure connection" warning is silenced (pytest
        # turns warnings into errors, so a warning here fails the test).
        return VectorStore.connect(config)


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[Any]:
    started: list[StandIn] = []

    def make(name: str = "qdrant", **options: Any) -> StandIn:
        directory = tmp_path / name
        directory.mkdir()
        standin = StandIn(directory, **options)
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.kill()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> Iterator[tuple[StandIn, VectorStore]]:
    """One stand-in for the module, the demo corpus ingested into `nixos_docs` through it."""
    standin = StandIn(tmp_path_factory.mktemp("standin"))
    standin.start()
    try:
        store = standin.connect()
        documents = read_documents(CORPUS)
        asyncio.run(ingest(documents, "nixos_docs", embedder, store, progress=None))
        yield standin, store
        asyncio.run(store.close())
        assert standin.stop() == 0
    finally:
        standin.kill()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with ClientSession() as session:
        async with session.get(url, headers=headers or {}) as response:
            return response.status, await response.text()


async def send(url: str, method: str, body: bytes, key: str = KEY) -> tuple[int, Any]:
    headers = {"api-key": key, "Content-Type": "application/json"}
    async with ClientSession() as session:
        async with session.request(method, url, data=body, headers=headers) as response:
            return response.status, await response.json()


async def gateway_search(server, **body: Any) -> dict[str, Any]:
    async with ClientSession() as session:
        async with session.post(server.make_url("/vector/search"), json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def test_search_pages_through_the_standin_are_those_of_local_mode(
    gateway, served, corpus_store
):
    standin, store = served
    assert await store.count("nixos_docs") == 231
    remote = await gateway(store=store)
    local = await gateway(store=corpus_store)
    query = "configure the firewall to open a port"
    pages = []
    for offset in (0, 5):
        through_standin = await gateway_search(
            remote, collection="nixos_docs", query=query, limit=5, offset=offset
        )
        in_local_mode = await gateway_search(
            local, collection="nixos_docs", query=query, limit=5, offset=offset
        )
        ids = [hit["id"] for hit in through_standin["results"]]
        assert ids == [hit["id"] for hit in in_local_mode["results"]]
        for ours, theirs in zip(through_standin["results"], in_local_mode["results"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
            assert ours["payload"] == theirs["payload"]
        assert through_standin["total"] == 231 and through_standin["has_more"] is True
        assert through_standin["offset"] == offset and len(ids) == 5
        pages.append(ids)
    assert not set(pages[0]) & set(pages[1])
    assert (
        "firewall"
        in str(
            (await gateway_search(remote, collection="nixos_docs", query=query, limit=1))["results"]
        ).lower()
    )
    # Each request the daemon made is one line of the stand-in's log (the journal).
    log = standin.log()
    assert '"PUT /collections/nixos_docs/points?wait=true" 200' in log
    assert '"POST /collections/nixos_docs/points/query" 200' in log
    assert '"POST /collections/nixos_docs/points/count" 200' in log
    assert KEY not in log


async def test_filtered_pages_through_the_standin_are_those_of_local_mode(
    gateway, served, corpus_store
):
    standin, store = served
    filterable = {"filterable": {"nixos_docs": ["topic"]}}
    remote = await gateway(store=store, validation=filterable)
    local = await gateway(store=corpus_store, validation=filterable)
    body = {"collection": "nixos_docs", "query": "install", "filter": {"topic": "install"}}
    line = '"POST /collections/nixos_docs/points/count" 200'
    counts = standin.log().count(line)
    pages = [(5, 0), (5, 15), (5, 20), (20, 0)]
    for limit, offset in pages:
        through_standin = await gateway_search(remote, **body, limit=limit, offset=offset)
        in_local_mode = await gateway_search(local, **body, limit=limit, offset=offset)
        assert through_standin["total"] == in_local_mode["total"] == 19
        assert through_standin["has_more"] == in_local_mode["has_more"]
        ids = [hit["id"] for hit in through_standin["results"]]
        assert ids == [hit["id"] for hit in in_local_mode["results"]]
    # On a server the search and the count go out together, for every page: a filtered
    # count there is cheap, and waiting for the page first would add its round trip.
    assert standin.log().count(line) == counts + len(pages)


async def test_learning_and_the_gc_write_scroll_and_delete_through_the_standin(
    gateway, learning: LearningStore, served
):
    standin, _ = served
    store = standin.connect()
    store.client.delete_collection(COLLECTION)
    await learning.close_store()
    learning.store = store
    server = await gateway(store=store, postgres={"dsn": learning.dsn})

    async def learn(body: dict[str, Any]) -> dict[str, Any]:
        async with ClientSession() as session:
            async with session.post(server.make_url("/hybrid/learn"), json=body) as response:
                assert response.status == 201, await response.text()
                return await response.json()

    first = await learn({"query": "How to install vim", "solution": "vim", "value_score": 0.6})
    better = await learn(
        {"query": "how to install vim?", "solution": "programs.vim", "value_score": 0.9}
    )
    assert better == {"id": first["id"], "merged_into": first["id"]}
    vector = await learning.embedder.embed_query("installing the vim editor")
    hit = await store.nearest(COLLECTION, vector, 0.5)
    assert hit is not None and hit.id == first["id"]
    assert hit.payload["value_score"] == 0.9  # the merge rewrote the point's payload

    lost = await learning.add("how to mount an NFS share", 0.8, age_days=1, with_point=False)
    await learning.add_point(999_001, "an orphan point left by a crash", age_days=1)
    assert await learning.point_ids() == [first["id"], 999_001]
    result = await learning.run()
    assert result.done["orphan_points"] == 1 and result.done["reembedded"] == 1
    assert await learning.point_ids() == sorted([first["id"], lost], key=str)
    vector = await learning.embedder.embed_query("how to mount an NFS share")
    hit = await store.nearest(COLLECTION, vector, 0.9)
    assert hit is not None and hit.id == lost

    # The GC's scroll, one point a page: every point once, ids ascending, with vectors.
    pages = [page async for page in store.scroll(COLLECTION, with_vectors=True, batch=1)]
    assert [[p.id for p in page] for page in pages] == [[first["id"]], [lost]]
    assert all(p.vector is not None and len(p.vector) == 384 for page in pages for p in page)
    log = standin.log()
    assert f'"POST /collections/{COLLECTION}/points/payload?wait=true" 200' in log
    assert f'"POST /collections/{COLLECTION}/points/delete?wait=true" 200' in log
    assert f'"POST /collections/{COLLECTION}/points/scroll" 200' in log


async def test_without_the_key_or_with_a_wrong_one_requests_are_refused(served):
    standin, _ = served
    collections = f"{standin.url}/collections"
    assert await get(collections) == (401, MISSING_KEY)
    assert await get(collections, {"api-key": "not-the-key"}) == (401, WRONG_KEY)
    assert await get(collections, {"Authorization": "Bearer not-the-key"}) == (401, WRONG_KEY)
    status, body = await get(collections, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and {"name": "nixos_docs"} in json.loads(body)["result"]["collections"]
    # As Qdrant: the version and the health checks need no key.
    assert await get(f"{standin.url}/healthz") == (200, "healthz check passed")
    assert await get(f"{standin.url}/livez") == (200, "healthz check passed")
    assert await get(f"{standin.url}/readyz") == (200, "all shards are ready")
    status, body = await get(f"{standin.url}/")
    assert status == 200 and json.loads(body)["title"] == "qdrant - vector search engine"

    # The daemon with a wrong key: every call is refused, and the store says why, as an
    # unavailable dependency (the gateway's 503 and /readyz), not an internal error.
    wrong = standin.connect(key="not-the-key")
    try:
        with pytest.raises(QdrantUnavailable, match=r"refused the API key \(401\)"):
            await wrong.check()
        with pytest.raises(QdrantUnavailable, match=r"qdrant\.api_key_file"):
            await wrong.count("nixos_docs")
    finally:
        await wrong.close()
    assert '"GET /collections" 401' in standin.log()


async def test_errors_have_qdrant_status_codes_and_envelope(served):
    standin, store = served
    status, body = await get(f"{standin.url}/collections/missing", {"api-key": KEY})
    assert status == 404
    answer = json.loads(body)
    assert answer["status"] == {"error": "Not found: Collection `missing` doesn't exist!"}
    assert isinstance(answer["time"], float)
    url = f"{standin.url}/collections/nixos_docs"
    status, answer = await send(f"{url}/points/query", "POST", b"{not json")
    assert status == 400 and answer["status"]["error"].startswith("Format error in JSON body")
    status, answer = await send(f"{url}/points/query", "POST", b'{"query": [1.0, 2.0]}')
    assert (status, answer["status"]["error"]) == (
        400,
        "Wrong input: Vector dimension error: expected dim: 384, got 2",
    )
    create = json.dumps({"vectors": {"size": 384, "distance": "Cosine"}}).encode()
    status, answer = await send(url, "PUT", create)
    assert (status, answer["status"]["error"]) == (
        409,
        "Wrong input: Collection `nixos_docs` already exists!",
    )
    status, body = await get(f"{url}/points/424242", {"api-key": KEY})
    assert status == 404
    assert json.loads(body)["status"]["error"] == "Not found: Point with id 424242 does not exists!"
    status, body = await get(f"{url}/points/1", {"api-key": KEY})
    assert status == 200 and json.loads(body)["result"]["payload"]["title"]
    # What the daemon makes of a collection that is not there: nothing found, not a failure.
    assert await store.search("missing", [0.1] * 384, limit=5, offset=0) == []
    assert await store.count("missing") == 0


async def test_points_survive_a_restart_and_the_daemon_sees_the_outage(standins, embedder):
    standin = standins()
    standin.start()
    first_line = standin.log().splitlines()[0]
    assert f"listening on 127.0.0.1:{standin.port}" in first_line
    assert "API key required" in first_line
    store = standin.connect()
    documents = [
        Document(id=1, text="Open TCP port 443 in the NixOS firewall."),
        Document(id=2, text="Enable the OpenSSH daemon with services.openssh.enable."),
        Document(id="guide", text="Mount an NFS share at boot with fileSystems."),
    ]
    try:
        await ingest(documents, "docs", embedder, store, progress=None)
        vector = await embedder.embed_query("let ssh logins in")
        before = await store.search("docs", vector, limit=3, offset=0)
        assert before[0].id == 2

        assert standin.stop() == 0
        assert standin.log().rstrip().endswith("qdrant-standin: stopped")
        with pytest.raises(QdrantUnavailable):
            await store.count("docs")

        standin.start()
        # The same store object, no reconnect: the daemon carries on after the restart.
        assert await store.count("docs") == 3
        after = await store.search("docs", vector, limit=3, offset=0)
        assert [(h.id, h.payload["text"]) for h in after] == [
            (h.id, h.payload["text"]) for h in before
        ]
        assert [h.score for h in after] == pytest.approx([h.score for h in before])
    finally:
        await store.close()
    assert standin.stop() == 0


async def test_the_environment_key_overrides_the_file_and_no_key_means_open(standins):
    overridden = standins("overridden", env_key="from-the-environment", file_key="from-the-file")
    overridden.start()
    url = f"{overridden.url}/collections"
    assert await get(url, {"api-key": "from-the-file"}) == (401, WRONG_KEY)
    assert (await get(url, {"api-key": "from-the-environment"}))[0] == 200
    assert overridden.stop() == 0

    in_json = standins("json", env_key=None, file_key="from-the-file", config_name="q.json")
    in_json.start()
    assert (await get(f"{in_json.url}/collections", {"api-key": "from-the-file"}))[0] == 200
    assert await get(f"{in_json.url}/collections") == (401, MISSING_KEY)
    assert in_json.stop() == 0

    open_ = standins("open", env_key=None)
    open_.start()
    assert "no API key required" in open_.log().splitlines()[0]
    status, body = await get(f"{open_.url}/collections")
    assert status == 200 and json.loads(body)["result"] == {"collections": []}
    assert open_.stop() == 0


def test_a_key_sent_over_plain_http_off_the_host_is_still_warned_of(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("a-key\n")
    # 192.0.2.0/24 is TEST-NET-1: nothing answers, and the client does not connect yet.
    config = validate_config(
        {"qdrant": {"url": "http://192.0.2.1:6333", "api_key_file": str(key_file)}}
    ).qdrant
    with pytest.warns(UserWarning, match="insecure connection"):
        VectorStore.connect(config)


def test_yaml_without_pyyaml_is_refused_clearly(standins):
    standin = standins(env_key=None)
    # The stand-in run where `import yaml` fails, as on a machine without PyYAML.
    without_yaml = [
        sys.executable,
        "-c",
        "import runpy, sys; sys.modules['yaml'] = None; "
        "sys.argv = ['qdrant_standin', *sys.argv[1:]]; "
        "runpy.run_module('tests.vm.qdrant_standin', run_name='__main__')",
        "--config-path",
    ]
    done = subprocess.run(
        [*without_yaml, str(standin.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "PyYAML is not installed, so the settings must be JSON" in done.stderr
    assert str(standin.config_path) in done.stderr
    assert not standin.storage.exists()
