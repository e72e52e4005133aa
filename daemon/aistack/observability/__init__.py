"""Shared observability: journald-friendly event logs, sd_notify, Prometheus helpers."""
