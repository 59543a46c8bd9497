"""Fixtures for the etcd transport's tests: a private etcd-server (filled in with the driver)."""
