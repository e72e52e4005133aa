"""Native ACME (RFC 8555) certificates: issue, renew, install atomically, report.

Built on certbot's `acme` library for the protocol and `cryptography` for keys; the
library's client is blocking, which suits a oneshot command: it runs on the main thread,
and only the standalone challenge responder runs beside it.
"""
