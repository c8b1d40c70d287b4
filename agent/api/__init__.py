"""The local API on a unix socket: health, status, services, maintenance, metrics."""
