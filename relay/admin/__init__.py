"""The admin API (``/admin``, behind RELAY_ADMIN_TOKEN) and the operations it shares with the
CLI. README: Admin API."""
