"""Clients of the server's public API: the `parse` command and the one module it talks through."""
