"""Per-service health: checks (tcp, mysql, http, exec), the guard that keeps them off a healthy server, a
monitor that applies rise/fall thresholds, and the check's MySQL credentials. Nothing is imported here, so
that the config can read a credentials file (agent.health.credentials) without pymysql and aiohttp."""
