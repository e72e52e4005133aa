"""Run the gateway until SIGTERM: listen, tell systemd when ready, reload TLS on SIGHUP."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time

from aiohttp import web

from aistack.config import Config, GatewayConfig
from aistack.embedding import Embedder
from aistack.gateway.app import create_app
from aistack.gateway.connections import PeerCounts, PeerLimitedSite, runner_options
from aistack.gateway.state import STATE
from aistack.observability.logs import EventLog
from aistack.observability.sdnotify import notify
from aistack.stores.qdrant import VectorStore

log = EventLog("gateway")
SHUTDOWN_GRACE_SECONDS = 20.0


def peer_counts(app: web.Application, config: Config) -> PeerCounts:
    return PeerCounts(
        config.gateway.max_connections_per_client,
        config.gateway.trusted_networks,
        config.validation.ipv6_prefix,
        app[STATE].metrics.connection_refused,
    )


def tls_context(config: GatewayConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def reload_tls(context: ssl.SSLContext, config: GatewayConfig) -> None:
    """New handshakes get the new pair; open connections keep theirs. A pair that does
    not load leaves the old one in place (a half-written renewal must not take us down)."""
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as error:
        log.error("gateway.tls_reload_failed", cert=config.tls_cert_file, error=str(error))
        return
    log.info("gateway.tls_reloaded", cert=config.tls_cert_file)


def reload(context: ssl.SSLContext | None, config: GatewayConfig) -> None:
    """SIGHUP (`systemctl reload`): the TLS pair is the only state read again. Without TLS
    there is nothing to re-read, but the handler must still be there: Python's default
    for SIGHUP is to die, and systemd does not restart a unit killed by it."""
    # MONOTONIC_USEC lets systemd (>= 253) match this reload to the request.
    notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    if context is None:
        log.info("gateway.reloaded", tls=False)
    else:
        reload_tls(context, config)
    notify("READY=1")


async def serve(
    config: Config,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives. Raises OSError when a listen
    address cannot be bound."""
    app = create_app(config, embedder=embedder, store=store)
    options = runner_options(config.gateway.idle_timeout_seconds)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, **options
    )
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    context = tls_context(config.gateway) if config.gateway.tls_cert_file else None
    counts = peer_counts(app, config)
    try:
        for host, port in config.gateway.listen_addresses:
            site = PeerLimitedSite(
                runner, counts, app[STATE], options, host=host, port=port, ssl_context=context
            )
            await site.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload, context, config.gateway)
        listen = ",".join(config.gateway.listen)
        log.info("gateway.started", listen=listen, tls=context is not None)
        notify("READY=1", f"STATUS=serving on {listen}")
        await stop.wait()
        log.info("gateway.stopping")
        notify("STOPPING=1", "STATUS=finishing in-flight requests")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("gateway.stopped")
