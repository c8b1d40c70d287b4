"""Protocol probes: each module has a pure parser of captured bytes and an async probe around it."""
