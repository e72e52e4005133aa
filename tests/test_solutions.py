"""Reading the learning store back, on a real gateway over real PostgreSQL, Qdrant local
mode and the real model: search hits of `solved_issues` carry the stored rows,
`GET /hybrid/solutions/{id}` and the cursor-paginated `GET /hybrid/solutions`."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest
from aiohttp import ClientSession

from aistack.stores.private_postgres import free_port
from tests.learning import LearningStore, days_ago

LEARNED = [
    ("How to install vim", "environment.systemPackages = [ pkgs.vim ];", 0.7),
    ("How do I open a port in the firewall?", "networking.firewall.allowedTCPPorts", 0.9),
    ("Enable the OpenSSH daemon", "services.openssh.enable = true;", 0.4),
]


async def start(start_gateway, learning: LearningStore, **sections: Any):
    return await start_gateway(store=learning.store, postgres={"dsn": learning.dsn}, **sections)


async def call(
    server, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with ClientSession() as session:
        async with session.request(
            method, server.make_url(path), json=body, headers=headers
        ) as response:
            raw = await response.read()
            data = await response.json() if response.content_type == "application/json" else None
            return response.status, data, raw


async def learn_all(server) -> dict[str, int]:
    ids = {}
    for query, solution, score in LEARNED:
        status, body, _ = await call(
            server,
            "POST",
            "/hybrid/learn",
            {"query": query, "solution": solution, "value_score": score},
        )
        assert status == 201, body
        ids[query] = body["id"]
    return ids


async def search_solutions(server, query: str, limit: int = 10, offset: int = 0):
    status, body, _ = await call(
        server,
        "POST",
        "/vector/search",
        {"collection": "solved_issues", "query": query, "limit": limit, "offset": offset},
    )
    assert status == 200, body
    return body


# -- search reads the rows back ---------------------------------------------------------


async def test_a_learned_solution_is_found_with_its_text(gateway, learning):
    server = await start(gateway, learning)
    ids = await learn_all(server)
    body = await search_solutions(server, "install the vim editor", limit=1)
    [hit] = body["results"]
    assert hit["id"] == ids["How to install vim"]
    payload = hit["payload"]
    assert payload["query"] == "How to install vim"
    assert payload["solution"] == "environment.systemPackages = [ pkgs.vim ];"
    assert payload["value_score"] == 0.7
    created = datetime.datetime.fromisoformat(payload["created_at"])
    assert abs(created - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=5)
    assert body["has_more"] is True and body["total"] == 3


async def test_postgresql_is_the_source_of_truth(gateway, learning):
    server = await start(gateway, learning)
    ids = await learn_all(server)
    row = ids["How to install vim"]
    await learning.db.execute(
        "UPDATE solved_issues SET solution = 'programs.vim.enable = true;' WHERE id = $1", row
    )
    [hit] = (await search_solutions(server, "install the vim editor", limit=1))["results"]
    assert hit["payload"]["solution"] == "programs.vim.enable = true;"


async def test_a_hit_whose_row_is_gone_is_left_out_and_pagination_holds(gateway, learning):
    server = await start(gateway, learning)
    ids = await learn_all(server)
    # The row goes, its point stays: what a GC run between the two reads leaves.
    await learning.db.execute("DELETE FROM solved_issues WHERE id = $1", ids["How to install vim"])
    first = await search_solutions(server, "install the vim editor", limit=1)
    assert first["results"] == []
    assert first["has_more"] is True and first["total"] == 3
    rest = await search_solutions(server, "install the vim editor", limit=2, offset=1)
    assert {hit["id"] for hit in rest["results"]} == {
        ids["How do I open a port in the firewall?"],
        ids["Enable the OpenSSH daemon"],
    }
    assert rest["has_more"] is False and rest["total"] == 3


async def test_ingested_documents_keep_their_payload(gateway):
    server = await gateway()
    status, body, _ = await call(
        server,
        "POST",
        "/vector/search",
        {"collection": "nixos_docs", "query": "firewall", "limit": 1},
    )
    assert status == 200
    payload = body["results"][0]["payload"]
    assert "solution" not in payload and payload.get("text")


async def test_a_search_of_solutions_with_postgresql_down_is_a_503(gateway, learning):
    server = await start(gateway, learning)
    await learn_all(server)
    down = await gateway(
        store=learning.store, postgres={"dsn": f"postgresql://aistack@127.0.0.1:{free_port()}/x"}
    )
    status, body, _ = await call(
        down, "POST", "/vector/search", {"collection": "solved_issues", "query": "vim"}
    )
    assert status == 503 and body["errors"][0]["loc"] == "postgres"
    for path in ("/hybrid/solutions", "/hybrid/solutions/1"):
        status, body, _ = await call(down, "GET", path)
        assert status == 503 and body["errors"][0]["loc"] == "postgres", path


# -- one solution -----------------------------------------------------------------------


async def test_one_solution_is_read_back(gateway, learning):
    server = await start(gateway, learning)
    ids = await learn_all(server)
    row = ids["Enable the OpenSSH daemon"]
    status, body, _ = await call(server, "GET", f"/hybrid/solutions/{row}")
    assert status == 200
    assert body["id"] == row and body["query"] == "Enable the OpenSSH daemon"
    assert body["solution"] == "services.openssh.enable = true;" and body["value_score"] == 0.4
    assert datetime.datetime.fromisoformat(body["created_at"]).tzinfo is not None


async def test_never_stored_and_removed_by_the_gc_get_the_same_bytes(gateway, learning):
    kept = await learning.add("a fresh question about nix flakes", 0.9)
    expired = await learning.add("an old question about channels", 0.1, age_days=400)
    server = await start(gateway, learning)
    assert (await call(server, "GET", f"/hybrid/solutions/{expired}"))[0] == 200
    result = await learning.run()
    assert result.plan.expired == [expired]
    removed = await call(server, "GET", f"/hybrid/solutions/{expired}")
    never = await call(server, "GET", f"/hybrid/solutions/{kept + 1000}")
    assert removed[0] == never[0] == 404
    assert removed[2] == never[2]
    assert (await call(server, "GET", f"/hybrid/solutions/{kept}"))[0] == 200


@pytest.mark.parametrize(
    "text", ["abc", "0", "-1", "+1", "1.0", "1_0", "%20%31", "\u0661", "9223372036854775808"]
)
async def test_an_id_that_is_not_a_row_id_is_a_422(gateway, learning, text):
    server = await start(gateway, learning)
    status, body, _ = await call(server, "GET", f"/hybrid/solutions/{text}")
    assert status == 422, body
    assert body["errors"] == [
        {
            "loc": "id",
            "type": "wrong_type",
            "msg": "must be an integer from 1 to 9223372036854775807",
        }
    ]


# -- the listing ------------------------------------------------------------------------


async def add_many(learning: LearningStore, count: int) -> list[int]:
    """Rows with repeated scores and times, so ties must be broken by the id."""
    ids = []
    for number in range(count):
        row = await learning.db.fetchval(
            "INSERT INTO solved_issues (query, solution, value_score, created_at)"
            " VALUES ($1, 's', $2, $3) RETURNING id",
            f"question {number}",
            (number % 4) / 4,
            days_ago(number // 3),
        )
        ids.append(row)
    return ids


async def pages(server, order: str, limit: int) -> list[list[dict[str, Any]]]:
    found = []
    cursor = None
    while True:
        path = f"/hybrid/solutions?order={order}&limit={limit}"
        if cursor:
            path += f"&cursor={cursor}"
        status, body, _ = await call(server, "GET", path)
        assert status == 200, body
        found.append(body["results"])
        cursor = body["next"]
        if cursor is None:
            return found


def value_key(row: dict[str, Any]) -> tuple[float, str, int]:
    return (row["value_score"], row["created_at"], row["id"])


def recency_key(row: dict[str, Any]) -> tuple[str, int]:
    return (row["created_at"], row["id"])


async def test_the_listing_pages_through_every_row_in_order(gateway, learning):
    ids = await add_many(learning, 23)
    server = await start(gateway, learning)
    for order, key in (("value", value_key), ("recent", recency_key)):
        found = await pages(server, order, 5)
        assert [len(page) for page in found] == [5, 5, 5, 5, 3]
        rows = [row for page in found for row in page]
        assert sorted(row["id"] for row in rows) == ids
        assert rows == sorted(rows, key=key, reverse=True)
    # Exactly full last page: no empty page after it.
    assert [len(page) for page in await pages(server, "recent", 23)] == [23]
    status, body, _ = await call(server, "GET", "/hybrid/solutions")
    assert status == 200 and len(body["results"]) == 10  # validation.default_limit
    assert body["results"] == sorted(body["results"], key=recency_key, reverse=True)


async def test_an_empty_store_lists_nothing(gateway, learning):
    server = await start(gateway, learning)
    status, body, _ = await call(server, "GET", "/hybrid/solutions?order=value")
    assert (status, body) == (200, {"results": [], "next": None})


async def test_the_listing_is_stable_while_rows_come_and_go(gateway, learning):
    ids = await add_many(learning, 12)
    server = await start(gateway, learning)
    status, first, _ = await call(server, "GET", "/hybrid/solutions?order=recent&limit=4")
    assert status == 200
    seen = [row["id"] for row in first["results"]]
    # Meanwhile: a new row (newer than every page) and a removal further down.
    await learning.add("a brand new question", 0.5)
    later = sorted(set(ids) - set(seen))[0]
    await learning.db.execute("DELETE FROM solved_issues WHERE id = $1", later)
    # And a row of the first page goes: the cursor is a position, not a row.
    await learning.db.execute("DELETE FROM solved_issues WHERE id = $1", seen[-1])
    cursor = first["next"]
    rest = []
    while cursor:
        status, body, _ = await call(
            server, "GET", f"/hybrid/solutions?order=recent&limit=4&cursor={cursor}"
        )
        assert status == 200, body
        rest += body["results"]
        cursor = body["next"]
    assert sorted(seen + [row["id"] for row in rest]) == sorted(set(ids) - {later})


async def test_a_cursor_is_good_at_every_gateway_of_the_store(gateway, learning):
    await add_many(learning, 6)
    one = await start(gateway, learning)
    other = await start(gateway, learning)
    _, first, _ = await call(one, "GET", "/hybrid/solutions?order=value&limit=3")
    status, second, _ = await call(
        other, "GET", f"/hybrid/solutions?order=value&limit=3&cursor={first['next']}"
    )
    assert status == 200 and len(second["results"]) == 3 and second["next"] is None


def flip(text: str, position: int) -> str:
    swapped = "B" if text[position] == "A" else "A"
    return text[:position] + swapped + text[position + 1 :]


async def test_forged_and_stale_cursors_are_refused(gateway, learning):
    await add_many(learning, 6)
    server = await start(gateway, learning)
    _, page, _ = await call(server, "GET", "/hybrid/solutions?order=value&limit=2")
    cursor = page["next"]
    body_part = cursor.partition(".")[0]
    cases = {
        # Another position, signed by nobody.
        flip(cursor, 3): "not a cursor this gateway issued",
        flip(cursor, len(cursor) - 2): "not a cursor this gateway issued",
        body_part: "not a cursor this gateway issued",
        "abc": "not a cursor this gateway issued",
        "%C3%A9.%C3%A9": "not a cursor this gateway issued",
        f"{body_part}.!!!!": "not a cursor this gateway issued",
    }
    for forged, message in cases.items():
        status, body, _ = await call(
            server, "GET", f"/hybrid/solutions?order=value&cursor={forged}"
        )
        assert status == 422, forged
        assert body["errors"] == [{"loc": "cursor", "type": "invalid_cursor", "msg": message}]
    status, body, _ = await call(server, "GET", f"/hybrid/solutions?order=recent&cursor={cursor}")
    assert status == 422
    assert body["errors"][0]["msg"] == (
        "issued for order=value, not order=recent; start again without cursor"
    )
    # Another store's cursor (a store of its own key) is refused as forged.
    await learning.db.execute(
        "UPDATE gateway_secrets"
        " SET cursor_key = uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())"
    )
    fresh = await start(gateway, learning)
    status, body, _ = await call(fresh, "GET", f"/hybrid/solutions?order=value&cursor={cursor}")
    assert status == 422 and body["errors"][0]["type"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("query", "loc", "kind"),
    [
        ("limit=0", "limit", "greater_than_equal"),
        ("limit=101", "limit", "less_than_equal"),
        ("limit=ten", "limit", "int_parsing"),
        ("limit=", "limit", "int_parsing"),
        ("order=best", "order", "literal_error"),
        ("sort=value", "sort", "extra_forbidden"),
        ("limit=2&limit=3", "limit", "duplicate_key"),
        ("cursor=", "cursor", "string_too_short"),
        ("cursor=" + "a" * 257, "cursor", "string_too_long"),
    ],
)
async def test_bad_listing_parameters_are_a_422_naming_the_rule(
    gateway, learning, query, loc, kind
):
    server = await start(gateway, learning)
    status, body, _ = await call(server, "GET", f"/hybrid/solutions?{query}")
    assert status == 422, body
    assert [(e["loc"], e["type"]) for e in body["errors"]] == [(loc, kind)]


# -- like every route -------------------------------------------------------------------


async def test_api_keys_decide_who_reads_solutions(gateway, learning, tmp_path):
    tokens = {name: f"{name}-" + "b" * 40 for name in ("docs", "reader", "listing")}
    entries = {
        "docs": ('["nixos_docs"]', '["*"]'),
        "reader": ('["*"]', '["/hybrid/solutions", "/hybrid/solutions/{id}"]'),
        "listing": ('["solved_issues"]', '["/hybrid/solutions"]'),
    }
    keys = tmp_path / "keys.toml"
    keys.write_text(
        "".join(
            f'[keys.{name}]\nsha256 = "{hashlib.sha256(tokens[name].encode()).hexdigest()}"\n'
            f"collections = {collections}\nendpoints = {endpoints}\n"
            for name, (collections, endpoints) in entries.items()
        )
    )
    row = await learning.add("a question", 0.5)
    server = await start(gateway, learning, gateway={"api_keys_file": str(keys)})

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    one, every = f"/hybrid/solutions/{row}", "/hybrid/solutions"
    assert (await call(server, "GET", one))[0] == 401
    assert (await call(server, "GET", every))[0] == 401
    status, body, _ = await call(server, "GET", one, headers=auth("docs"))
    assert status == 403 and body["detail"] == "this caller may not read solved_issues"
    assert (await call(server, "GET", every, headers=auth("docs")))[0] == 403
    assert (await call(server, "GET", one, headers=auth("reader")))[0] == 200
    assert (await call(server, "GET", every, headers=auth("reader")))[0] == 200
    status, body, _ = await call(server, "GET", one, headers=auth("listing"))
    assert status == 403 and body["detail"] == "this API key may not use /hybrid/solutions/{id}"
    assert (await call(server, "GET", every, headers=auth("listing")))[0] == 200


async def test_reads_count_against_the_quota_and_are_measured(gateway, learning):
    row = await learning.add("a question", 0.5)
    server = await start(gateway, learning, validation={"rate_limits": ["3/minute"]})
    statuses = [
        (await call(server, "GET", path))[0]
        for path in (
            f"/hybrid/solutions/{row}",
            "/hybrid/solutions",
            f"/hybrid/solutions/{row + 1}",
        )
    ]
    assert statuses == [200, 200, 404]
    assert (await call(server, "GET", "/hybrid/solutions"))[0] == 429
    _, _, metrics = await call(server, "GET", "/metrics")
    text = metrics.decode()
    for series in (
        'aistack_http_requests_total{endpoint="/hybrid/solutions/{id}",status="200"} 1.0',
        'aistack_http_requests_total{endpoint="/hybrid/solutions/{id}",status="404"} 1.0',
        'aistack_http_requests_total{endpoint="/hybrid/solutions",status="429"} 1.0',
    ):
        assert series in text, series


async def test_the_openapi_document_describes_both_routes(gateway, learning):
    server = await start(gateway, learning)
    _, document, _ = await call(server, "GET", "/openapi.json")
    listing = document["paths"]["/hybrid/solutions"]["get"]
    parameters = {p["name"]: p for p in listing["parameters"]}
    assert set(parameters) == {"order", "limit", "cursor"}
    assert parameters["order"]["schema"]["enum"] == ["value", "recent"]
    assert parameters["limit"]["schema"]["maximum"] == 100
    assert {"200", "401", "403", "422", "429", "503"} <= set(listing["responses"])
    one = document["paths"]["/hybrid/solutions/{id}"]["get"]
    assert [p["name"] for p in one["parameters"]] == ["id"]
    assert {"200", "403", "404", "422"} <= set(one["responses"])
    page = document["components"]["schemas"]["SolutionsPage"]
    assert set(page["properties"]) == {"results", "next"}


async def test_a_store_at_schema_1_upgrades_and_lists_its_rows(
    gateway, tmp_path, postgres, embedder
):
    from aistack.stores.schema import MIGRATIONS, migrate

    old = await LearningStore(tmp_path, postgres, embedder).open(migrated=False)
    try:
        await old.db.execute(
            "CREATE TABLE aistack_schema (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await old.db.execute(MIGRATIONS[0])
        await old.db.execute("INSERT INTO aistack_schema (version) VALUES (1)")
        row = await old.db.fetchval(
            "INSERT INTO solved_issues (query, solution, value_score) VALUES ('q', 's', 0.5)"
            " RETURNING id"
        )
        assert await migrate(old.db) == [2]
        server = await start(gateway, old)
        status, body, _ = await call(server, "GET", "/hybrid/solutions?order=recent")
        assert status == 200 and [r["id"] for r in body["results"]] == [row]
        indexes = await old.db.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'solved_issues'"
        )
        assert {r["indexname"] for r in indexes} == {
            "solved_issues_pkey",
            "solved_issues_value",
            "solved_issues_recent",
        }
    finally:
        await old.close()
