"""Helpers shared by the test suites: real registry processes and a real PostgreSQL."""
