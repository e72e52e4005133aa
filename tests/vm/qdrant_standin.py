"""A stand-in for a Qdrant server, for test machines where no Qdrant binary installs.

    python3 -m tests.vm.qdrant_standin --config-path /nix/store/…-config.yaml

It reads the settings file that `services.qdrant` (nixpkgs) writes, as the real server
does: `service.host`, `service.http_port`, `service.api_key`, `storage.storage_path`
(other keys are accepted and ignored), with the environment overriding the file the way
Qdrant's `QDRANT__SECTION__KEY` variables do (`QDRANT__SERVICE__API_KEY` above all: the
aistack module hands the key over that way, through an EnvironmentFile). The file is read
as YAML when PyYAML is importable; without it only JSON (a subset of YAML) is accepted,
and a YAML file is refused with a message saying so.

Behind the REST API sits a real qdrant-client local-mode store
(`QdrantClient(path=storage.storage_path)`), so points persist across restarts and
searches are the real cosine search. It answers what the synchronous REST client of
qdrant-client (`QdrantClient(url=…, api_key=…)`, as `aistack.stores.qdrant` uses it;
no gRPC) sends for the daemon's operations, plus the service endpoints:

    GET  /                                     version info (no envelope, no key needed)
    GET  /healthz  /livez  /readyz             plain text (no key needed)
    GET  /collections                          list
    GET  /collections/{name}                   info (404 when missing)
    GET  /collections/{name}/exists            {"exists": …}
    PUT  /collections/{name}                   create (409 when it exists)
    DELETE /collections/{name}                 delete (false when missing)
    PUT  /collections/{name}/points            upsert (batch or list)
    POST /collections/{name}/points            retrieve by ids
    GET  /collections/{name}/points/{id}       one point (404 when missing)
    POST /collections/{name}/points/payload    set payload (404 for a missing point id)
    PUT  /collections/{name}/points/payload    overwrite payload
    POST /collections/{name}/points/delete     delete by ids or filter
    POST /collections/{name}/points/scroll     page through points (ids ascending)
    POST /collections/{name}/points/count      count
    POST /collections/{name}/points/query      universal query (nearest vector)

Answers use Qdrant's envelope, `{"result": …, "status": "ok", "time": seconds}`, and its
errors `{"status": {"error": "Not found: Collection `x` doesn't exist!"}, "time": …}` with
the real status codes (src/actix/helpers.rs, HttpError::status_code, and
lib/storage/src/content_manager/errors.rs for the message prefixes: BadInput and
AlreadyExists are "Wrong input: …", NotFound "Not found: …"; a body that does not
deserialize is 400 "Format error in JSON body: …", src/actix/mod.rs
validation_error_handler).

With a key configured, every path except `/`, `/healthz`, `/readyz*` and `/livez*` needs
it in the `api-key` header or as `Authorization: Bearer …` (src/actix/mod.rs,
api_key_whitelist; src/common/auth/mod.rs, AuthKeys::extract_key). Since Qdrant 1.9
(qdrant/qdrant#3968, "Respond with 401 Unauthorized for lacking or failed authentication
credentials") both a missing and a wrong key get 401 with a plain-text body, "Must
provide an API key or an Authorization bearer token" or "Invalid API key or JWT"
(src/common/auth/mod.rs, AuthKeys::validate_request; src/actix/auth.rs maps
AuthError::Unauthorized to HttpResponse::Unauthorized). 403 is only for JWT
permissions, which this stand-in does not implement.

One line per request goes to stderr (the journal under systemd), never with the key; the
first line names the address and whether a key is required. SIGTERM or SIGINT stops it
cleanly (exit 0) after closing the store.

Not Qdrant: one process, one store, no gRPC, no snapshots, no clustering, no payload
indexes, no JWT; operations run one at a time (local mode is not thread-safe).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib
import importlib.metadata
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client import QdrantClient, models

T = TypeVar("T")

# Paths that need no key (src/actix/mod.rs, api_key_whitelist): exact, then prefixes.
OPEN_EXACT = frozenset({"/", "/healthz"})
OPEN_PREFIXES = ("/readyz", "/livez")
MISSING_KEY = "Must provide an API key or an Authorization bearer token"
WRONG_KEY = "Invalid API key or JWT"

# Defaults of Qdrant's own config/config.yaml, for keys a settings file leaves out.
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 6333
DEFAULT_STORAGE = "./storage"


def _client_version() -> str:
    try:
        return importlib.metadata.version("qdrant-client")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copies
        return "0.0.0"


# The REST API answered is the one of the qdrant-client that drives the store, so report
# that version: a client's compatibility check then finds nothing to warn about.
VERSION = _client_version()


class ConfigError(Exception):
    """A settings file the stand-in cannot use; the message says why."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    storage_path: str
    api_key: str | None


def load_settings(path: str, environ: dict[str, str] | os._Environ[str]) -> Settings:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{file}: cannot read the settings file: {error.strerror}") from None
    data = _parse(file, text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the settings must be a mapping, not {type(data).__name__}")
    service = _section(file, data, "service")
    storage = _section(file, data, "storage")

    host = environ.get("QDRANT__SERVICE__HOST") or service.get("host") or DEFAULT_HOST
    port_value: Any = environ.get("QDRANT__SERVICE__HTTP_PORT") or service.get(
        "http_port", DEFAULT_PORT
    )
    try:
        port = int(port_value)
    except (TypeError, ValueError):
        raise ConfigError(f"{file}: service.http_port {port_value!r} is not a port") from None
    if not 0 <= port <= 65535 or isinstance(port_value, bool):
        raise ConfigError(f"{file}: service.http_port {port_value!r} is not a port")
    storage_path = (
        environ.get("QDRANT__STORAGE__STORAGE_PATH")
        or storage.get("storage_path")
        or DEFAULT_STORAGE
    )
    # Qdrant's settings layer gives the environment the last word; an empty key is no key.
    if "QDRANT__SERVICE__API_KEY" in environ:
        api_key: Any = environ["QDRANT__SERVICE__API_KEY"]
    else:
        api_key = service.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigError(f"{file}: service.api_key must be a string")
    return Settings(str(host), port, str(storage_path), api_key or None)


def _parse(file: Path, text: str) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        yaml = None
    if yaml is not None:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {error}") from None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{file}: PyYAML is not installed, so the settings must be JSON, and this is not "
            f"JSON ({error.msg} at line {error.lineno} column {error.colno}); install PyYAML "
            "(python3Packages.pyyaml) to read the YAML that services.qdrant writes"
        ) from None


def _section(file: Path, data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {name} must be a mapping")
    return value


class QdrantError(Exception):
    """An error answer: the status code and Qdrant's message (prefix included)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(description: str) -> QdrantError:
    return QdrantError(404, f"Not found: {description}")


def wrong_input(description: str) -> QdrantError:
    return QdrantError(400, f"Wrong input: {description}")


def missing_collection(name: str) -> QdrantError:
    return not_found(f"Collection `{name}` doesn't exist!")


def dump(value: Any) -> Any:
    """JSON-ready values: models as the client parses them back, UUIDs as strings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [dump(item) for item in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _given(**options: Any) -> dict[str, Any]:
    """Only the options a request set: an older qdrant-client (the one a distribution
    packages) may not know a newer keyword, and would refuse it even as None."""
    return {name: value for name, value in options.items() if value is not None}


def update_result(result: models.UpdateResult, wait: bool) -> Any:
    # Every write finishes before the answer; `wait=false` is still answered as Qdrant
    # does, "acknowledged".
    status = models.UpdateStatus.COMPLETED if wait else models.UpdateStatus.ACKNOWLEDGED
    return {"operation_id": result.operation_id or 0, "status": status.value}


class Store:
    """The local-mode client, called from one worker thread (it is not thread-safe), so
    the event loop keeps answering health checks while a long call runs."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="qdrant-standin")

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def require(self, name: str) -> None:
        if not self.client.collection_exists(name):
            raise missing_collection(name)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.client.close()


STORE = web.AppKey("store", Store)
API_KEY = web.AppKey("api_key", str)

Handler = Callable[[web.Request], Awaitable[Any]]


def answer(result: Any, started: float, status: int = 200) -> web.Response:
    return web.json_response(
        {"result": result, "status": "ok", "time": time.perf_counter() - started}, status=status
    )


def error_answer(status: int, message: str, started: float) -> web.Response:
    return web.json_response(
        {"status": {"error": message}, "time": time.perf_counter() - started}, status=status
    )


def endpoint(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A REST handler whose return value is the envelope's `result`."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return answer(await handler(request), started)
        except QdrantError as error:
            return error_answer(error.status, error.message, started)
        except ValidationError as error:
            return error_answer(400, f"Format error in JSON body: {_problems(error)}", started)
        except ValueError as error:
            message = str(error)
            if not message.startswith("Wrong input: "):
                message = f"Wrong input: {message}"
            return error_answer(400, message, started)
        except Exception as error:  # a bug here or in local mode: Qdrant's 500
            print(f"qdrant-standin: error: {error.__class__.__name__}: {error}", file=sys.stderr)
            return error_answer(500, f"Service internal error: {error}", started)

    return wrapped


def _problems(error: ValidationError) -> str:
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


async def body_as(request: web.Request, shape: Any) -> Any:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QdrantError(400, f"Format error in JSON body: {error}") from None
    if data is None:
        raise QdrantError(400, "Format error in JSON body: EOF while parsing a value")
    return TypeAdapter(shape).validate_python(data)


def waits(request: web.Request) -> bool:
    return request.query.get("wait", "false").lower() == "true"


# --- service ---------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    return web.json_response(
        {"title": "qdrant - vector search engine", "version": VERSION, "commit": "standin"}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="healthz check passed", content_type="text/plain")


async def readyz(request: web.Request) -> web.Response:
    return web.Response(text="all shards are ready", content_type="text/plain")


# --- collections -----------------------------------------------------------------------


@endpoint
async def list_collections(request: web.Request) -> Any:
    store = request.app[STORE]
    return dump(await store.run(store.client.get_collections))


@endpoint
async def get_collection(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]

    def get() -> models.CollectionInfo:
        store.require(name)
        return store.client.get_collection(name)

    return dump(await store.run(get))


@endpoint
async def collection_exists(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    return {"exists": await store.run(lambda: store.client.collection_exists(name))}


@endpoint
async def create_collection(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.CreateCollection = await body_as(request, models.CreateCollection)

    def create() -> bool:
        if store.client.collection_exists(name):
            # StorageError::AlreadyExists: 409, worded as "Wrong input: …".
            raise QdrantError(409, f"Wrong input: Collection `{name}` already exists!")
        return store.client.create_collection(
            name,
            vectors_config=spec.vectors,
            sparse_vectors_config=spec.sparse_vectors,
            **_given(metadata=spec.metadata),
        )

    return await store.run(create)


@endpoint
async def delete_collection(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    return await store.run(lambda: store.client.delete_collection(name))


# --- points ----------------------------------------------------------------------------


@endpoint
async def upsert(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    operation = await body_as(request, models.PointInsertOperations)
    points: models.Batch | list[models.PointStruct] = (
        operation.batch if isinstance(operation, models.PointsBatch) else operation.points
    )

    def write() -> models.UpdateResult:
        store.require(name)
        return store.client.upsert(
            name, points=points, wait=True, **_given(update_filter=operation.update_filter)
        )

    return update_result(await store.run(write), waits(request))


def _payload_points(spec: models.SetPayload) -> Any:
    if spec.points is not None:
        return models.PointIdsList(points=spec.points)
    if spec.filter is not None:
        return models.FilterSelector(filter=spec.filter)
    raise wrong_input("Either list of point ids or filter must be provided")


def _same_id(value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return value
    return str(value)


def _require_points(store: Store, name: str, ids: list[Any]) -> None:
    stored = store.client.retrieve(name, ids=ids, with_payload=False)
    found = {_same_id(p.id) for p in stored}
    for point in ids:
        if _same_id(point) not in found:
            raise not_found(f"No point with id {point} found")


@endpoint
async def set_payload(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.SetPayload = await body_as(request, models.SetPayload)
    selector = _payload_points(spec)
    overwrite = request.method == "PUT"

    def write() -> models.UpdateResult:
        store.require(name)
        if isinstance(selector, models.PointIdsList):
            _require_points(store, name, selector.points)
        if overwrite:
            return store.client.overwrite_payload(
                name, payload=spec.payload, points=selector, wait=True
            )
        return store.client.set_payload(
            name, payload=spec.payload, points=selector, key=spec.key, wait=True
        )

    return update_result(await store.run(write), waits(request))


@endpoint
async def delete_points(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    selector = await body_as(request, models.PointsSelector)

    def delete() -> models.UpdateResult:
        store.require(name)
        return store.client.delete(name, points_selector=selector, wait=True)

    return update_result(await store.run(delete), waits(request))


@endpoint
async def retrieve(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.PointRequest = await body_as(request, models.PointRequest)

    def get() -> list[models.Record]:
        store.require(name)
        return store.client.retrieve(
            name,
            ids=spec.ids,
            with_payload=True if spec.with_payload is None else spec.with_payload,
            with_vectors=False if spec.with_vector is None else spec.with_vector,
        )

    return dump(await store.run(get))


@endpoint
async def get_point(request: web.Request) -> Any:
    store, name, text = request.app[STORE], request.match_info["name"], request.match_info["id"]
    point: int | str
    if text.isdigit():
        point = int(text)
    else:
        try:
            point = str(uuid.UUID(text))
        except ValueError:
            raise wrong_input(f'Can not recognize "{text}" as point id') from None

    def get() -> models.Record:
        store.require(name)
        records = store.client.retrieve(name, ids=[point], with_payload=True, with_vectors=True)
        if not records:
            raise not_found(f"Point with id {point} does not exists!")
        return records[0]

    return dump(await store.run(get))


@endpoint
async def scroll(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.ScrollRequest = await body_as(request, models.ScrollRequest)

    def page() -> tuple[list[models.Record], Any]:
        store.require(name)
        return store.client.scroll(
            name,
            scroll_filter=spec.filter,
            limit=10 if spec.limit is None else spec.limit,
            order_by=spec.order_by,
            offset=spec.offset,
            with_payload=True if spec.with_payload is None else spec.with_payload,
            with_vectors=False if spec.with_vector is None else spec.with_vector,
        )

    points, next_offset = await store.run(page)
    return {"points": dump(points), "next_page_offset": dump(next_offset)}


@endpoint
async def count(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.CountRequest = await body_as(request, models.CountRequest)

    def number() -> models.CountResult:
        store.require(name)
        return store.client.count(name, count_filter=spec.filter, exact=spec.exact is not False)

    return dump(await store.run(number))


def _check_dimension(store: Store, name: str, query: Any, using: str | None) -> None:
    """Qdrant's own message for a query vector of the wrong size (local mode would fail
    with a numpy shape error)."""
    vector = query.nearest if isinstance(query, models.NearestQuery) else query
    if using is not None or not isinstance(vector, list) or not vector:
        return
    if not all(isinstance(x, int | float) for x in vector):
        return
    params = store.client.get_collection(name).config.params.vectors
    if isinstance(params, models.VectorParams) and params.size != len(vector):
        raise wrong_input(f"Vector dimension error: expected dim: {params.size}, got {len(vector)}")


@endpoint
async def query_points(request: web.Request) -> Any:
    store, name = request.app[STORE], request.match_info["name"]
    spec: models.QueryRequest = await body_as(request, models.QueryRequest)

    def search() -> models.QueryResponse:
        store.require(name)
        _check_dimension(store, name, spec.query, spec.using)
        return store.client.query_points(
            name,
            query=spec.query,
            using=spec.using,
            prefetch=spec.prefetch,
            query_filter=spec.filter,
            search_params=spec.params,
            limit=10 if spec.limit is None else spec.limit,
            offset=spec.offset,
            with_payload=True if spec.with_payload is None else spec.with_payload,
            with_vectors=False if spec.with_vector is None else spec.with_vector,
            **_given(score_threshold=spec.score_threshold, lookup_from=spec.lookup_from),
        )

    return dump(await store.run(search))


# --- middleware, app, main -------------------------------------------------------------


def is_open(path: str) -> bool:
    return path in OPEN_EXACT or path.startswith(OPEN_PREFIXES)


def presented_key(request: web.Request) -> str | None:
    key = request.headers.get("api-key")
    if key is None:
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            key = authorization[len("Bearer ") :]
    return key


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        print(
            f'{request.remote} "{request.method} {request.path_qs}" {status} '
            f"{time.perf_counter() - started:.3f}s",
            file=sys.stderr,
            flush=True,
        )


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app.get(API_KEY)
    if expected and not is_open(request.path):
        key = presented_key(request)
        if key is None:
            return web.Response(status=401, text=MISSING_KEY)
        if not hmac.compare_digest(key.encode(), expected.encode()):
            return web.Response(status=401, text=WRONG_KEY)
    response: web.StreamResponse = await handler(request)
    return response


def create_app(store: Store, api_key: str | None) -> web.Application:
    app = web.Application(middlewares=[access_log, require_key], client_max_size=32 * 2**20)
    app[STORE] = store
    if api_key:
        app[API_KEY] = api_key
    add = app.router.add_route
    add("GET", "/", root)
    add("GET", "/healthz", healthz)
    add("GET", "/livez", healthz)
    add("GET", "/readyz", readyz)
    add("GET", "/collections", list_collections)
    add("GET", "/collections/{name}", get_collection)
    add("PUT", "/collections/{name}", create_collection)
    add("DELETE", "/collections/{name}", delete_collection)
    add("GET", "/collections/{name}/exists", collection_exists)
    add("PUT", "/collections/{name}/points", upsert)
    add("POST", "/collections/{name}/points", retrieve)
    add("POST", "/collections/{name}/points/payload", set_payload)
    add("PUT", "/collections/{name}/points/payload", set_payload)
    add("POST", "/collections/{name}/points/delete", delete_points)
    add("POST", "/collections/{name}/points/scroll", scroll)
    add("POST", "/collections/{name}/points/count", count)
    add("POST", "/collections/{name}/points/query", query_points)
    add("GET", "/collections/{name}/points/{id}", get_point)
    return app


def open_store(path: str) -> Store:
    try:
        return Store(QdrantClient(path=path))
    except RuntimeError as error:
        if "already accessed" in str(error):
            raise ConfigError(
                f"the storage {path} is held by another process (local mode admits one)"
            ) from None
        raise
    except OSError as error:
        raise ConfigError(
            f"the storage {path} cannot be created or written: {error.strerror}"
        ) from None


async def serve(settings: Settings) -> None:
    store = open_store(settings.storage_path)
    runner = web.AppRunner(create_app(store, settings.api_key), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        key = "API key required" if settings.api_key else "no API key required"
        print(
            f"qdrant-standin {VERSION}: listening on {settings.host}:{settings.port} (REST), "
            f"{key}, storage {settings.storage_path}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        print("qdrant-standin: stopping", file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qdrant-standin", description="A stand-in for a Qdrant server (REST only)."
    )
    parser.add_argument("--config-path", required=True, help="Qdrant settings, YAML or JSON")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config_path, os.environ)
        asyncio.run(serve(settings))
    except ConfigError as error:
        print(f"qdrant-standin: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the address is taken or cannot be bound
        print(f"qdrant-standin: error: {error.strerror or error}", file=sys.stderr)
        return 1
    print("qdrant-standin: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
