"""Protocol probes: each module holds what to send and a pure parser of the bytes that come back;
discovery/identify.py registers them by protocol name and talks to the socket through banner.converse,
the one way in."""
