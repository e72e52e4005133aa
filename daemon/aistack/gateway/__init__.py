"""The gateway: every search and every learned solution of the AI stack goes through it.

It validates, rate-limits, paginates and meters requests before they reach Qdrant or
PostgreSQL. `create_app(config)` builds the aiohttp application for production and tests
alike; `serve(config)` runs it under systemd.
"""
