"""A small service for the gz call, list and describe tests (echo.proto, server.py)."""
