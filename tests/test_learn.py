"""`POST /hybrid/learn` on a real gateway: PostgreSQL row, Qdrant point, write-time merge."""

from __future__ import annotations

import json

import pytest
from aiohttp import ClientSession

from aistack.config import validate_config
from aistack.stores.qdrant import VectorStore
from aistack.stores.schema import SchemaError
from aistack.stores.solutions import COLLECTION
from tests.learning import LearningStore
from tests.test_gateway_dependencies import free_port

VIM = {"query": "How to install vim", "solution": "environment.systemPackages = [ pkgs.vim ];"}


async def learn(server, body):
    async with ClientSession() as session:
        async with session.post(server.make_url("/hybrid/learn"), json=body) as response:
            return response.status, await response.json(), response.headers


async def start(gateway, learning: LearningStore, **sections):
    return await gateway(store=learning.store, postgres={"dsn": learning.dsn}, **sections)


async def test_a_solution_becomes_a_row_and_a_point(gateway, learning: LearningStore):
    server = await start(gateway, learning)
    status, body, _ = await learn(server, {**VIM, "value_score": 0.7})
    assert status == 201
    assert set(body) == {"id"}
    assert await learning.rows() == {body["id"]: ("How to install vim", 0.7)}
    assert await learning.point_ids() == [body["id"]]
    vector = await learning.embedder.embed_query("installing the vim editor")
    hit = await learning.store.nearest(COLLECTION, vector, 0.5)
    assert hit is not None and hit.id == body["id"]
    assert hit.payload["value_score"] == 0.7 and "created_at" in hit.payload


async def test_a_near_copy_is_merged_keeping_the_better_solution(gateway, learning):
    server = await start(gateway, learning)
    _, first, _ = await learn(server, {**VIM, "value_score": 0.6})
    status, better, _ = await learn(
        server, {"query": "how to install vim?", "solution": "use programs.vim", "value_score": 0.9}
    )
    assert status == 201
    assert better == {"id": first["id"], "merged_into": first["id"]}
    _, worse, _ = await learn(
        server, {"query": "How to install vim", "solution": "worse", "value_score": 0.1}
    )
    assert worse == {"id": first["id"], "merged_into": first["id"]}
    row = await learning.db.fetchrow("SELECT solution, value_score FROM solved_issues")
    assert (row["solution"], row["value_score"]) == ("use programs.vim", 0.9)
    assert await learning.point_ids() == [first["id"]]
    # A different question is its own row.
    _, other, _ = await learn(
        server, {"query": "How do I configure the firewall?", "solution": "x", "value_score": 0.5}
    )
    assert "merged_into" not in other and other["id"] != first["id"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({**VIM, "value_score": 1.5}, "value_score: maximum 1.0 exceeded (got 1.5)"),
        ({**VIM, "value_score": -0.1}, "value_score: minimum 0.0 not met (got -0.1)"),
        ({**VIM, "value_score": "0.5"}, "value_score: Input should be a valid number"),
        ({"query": "", "solution": "x", "value_score": 0.5}, "query: min_length 1 not met"),
        ({**VIM, "query": "q" * 10001, "value_score": 0.5}, "query: max_length 10000 exceeded"),
        ({**VIM, "value_score": 0.5, "id": 7}, "id: unknown field"),
        ({"query": "x", "value_score": 0.5}, "solution: required field missing"),
    ],
)
async def test_bad_solutions_are_refused_and_change_nothing(gateway, learning, body, detail):
    server = await start(gateway, learning)
    status, answer, _ = await learn(server, body)
    assert status == 422
    assert answer["detail"].startswith(detail), answer["detail"]
    assert await learning.rows() == {}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {**VIM, "solution": "<script>alert(1)</script>"},
            "solution: matches deny pattern '<script'",
        ),
        ({**VIM, "solution": "cat ../../etc/shadow"}, "solution: matches deny pattern '../'"),
        (
            {"query": "'; DROP TABLE solved_issues; --", "solution": "x"},
            "query: matches deny pattern 'drop '",
        ),
        # Both fields are screened and both named; disguises are folded as for searches.
        (
            {"query": "<SCR\u034fIPT>", "solution": "ＤＲＯＰ table x"},
            "query: matches deny pattern '<script'; solution: matches deny pattern 'drop '",
        ),
    ],
)
async def test_learned_text_gets_the_content_rules_of_queries(gateway, learning, body, detail):
    server = await start(gateway, learning)
    status, answer, _ = await learn(server, {**body, "value_score": 0.5})
    assert (status, answer["detail"]) == (422, detail)
    assert {error["type"] for error in answer["errors"]} == {"deny_pattern"}
    assert await learning.rows() == {}
    assert await learning.point_ids() == []


async def test_a_repeated_key_is_refused_and_stores_nothing(gateway, learning):
    server = await start(gateway, learning)
    raw = b'{"query":"q","solution":"s","value_score":0.9,"value_score":0.1}'
    async with ClientSession() as session:
        async with session.post(
            server.make_url("/hybrid/learn"),
            data=raw,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 422
            assert (await response.json())["detail"] == "value_score: duplicate key"
    assert await learning.rows() == {}


async def test_learned_text_has_its_own_patterns_and_action(gateway, learning):
    server = await start(
        gateway,
        learning,
        validation={"learn_deny_patterns": ["<script"], "learn_deny_action": "log"},
    )
    # "../" is denied in searches but not in learned text here; "<script" is only logged.
    config = {**VIM, "solution": "imports = [ ../hardware.nix ];", "value_score": 0.5}
    assert (await learn(server, config))[0] == 201
    logged = {"query": "Embed a <script> tag", "solution": "no", "value_score": 0.5}
    assert (await learn(server, logged))[0] == 201
    assert len(await learning.rows()) == 2
    async with ClientSession() as session:
        async with session.get(server.make_url("/metrics")) as response:
            metrics = await response.text()
    assert 'aidb_query_validation_failures_total{reason="deny_pattern"} 1.0' in metrics


async def test_qdrant_down_leaves_no_row(gateway, learning):
    config = validate_config({"qdrant": {"url": f"http://127.0.0.1:{free_port()}"}})
    down = VectorStore.connect(config.qdrant)
    try:
        server = await gateway(store=down, postgres={"dsn": learning.dsn})
        status, body, headers = await learn(server, {**VIM, "value_score": 0.5})
        assert status == 503 and headers["Retry-After"] == "5"
        assert body["detail"] == "qdrant is unavailable; retry later"
    finally:
        await down.close()
    assert await learning.rows() == {}


async def test_a_commit_that_fails_after_the_point_takes_the_point_back(gateway, learning):
    # PostgreSQL refuses the row at COMMIT, after Qdrant took the point (a deferred check).
    assert learning.db is not None
    await learning.db.execute(
        """
        CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
        CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON solved_issues
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
        """
    )
    server = await start(gateway, learning)
    status, body, _ = await learn(server, {**VIM, "value_score": 0.5})
    assert (status, body["detail"]) == (503, "postgres is unavailable; retry later")
    assert await learning.rows() == {}
    assert await learning.point_ids() == []
    # The next learn of the query is not merged into a point without a row.
    await learning.db.execute("DROP TRIGGER refuse_at_commit ON solved_issues")
    status, body, _ = await learn(server, {**VIM, "value_score": 0.5})
    assert status == 201 and "merged_into" not in body
    assert await learning.point_ids() == [body["id"]]


async def test_postgres_down_gives_503(gateway, learning):
    server = await gateway(
        store=learning.store, postgres={"dsn": "postgresql://postgres@127.0.0.1:9/aistack"}
    )
    status, body, _ = await learn(server, {**VIM, "value_score": 0.5})
    assert status == 503
    assert body["detail"] == "postgres is unavailable; retry later"
    assert await learning.point_ids() == []


async def test_learn_is_rate_limited_and_size_limited(gateway, learning):
    server = await start(gateway, learning, validation={"rate_limits": ["2/minute"]})
    assert (await learn(server, {**VIM, "value_score": 0.5}))[0] == 201
    async with ClientSession() as session:
        async with session.post(
            server.make_url("/hybrid/learn"),
            data=json.dumps({**VIM, "solution": "s" * 40000, "value_score": 0.5}),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 413
    status, _, headers = await learn(server, {**VIM, "value_score": 0.5})
    assert status == 429 and "Retry-After" in headers


async def test_the_gateway_refuses_an_unmigrated_schema(gateway, tmp_path, postgres, embedder):
    store = LearningStore(tmp_path, postgres, embedder)
    await store.open(migrated=False)
    try:
        with pytest.raises(SchemaError, match="run `aistack db migrate"):
            await gateway(store=store.store, postgres={"dsn": store.dsn})
    finally:
        await store.close()
