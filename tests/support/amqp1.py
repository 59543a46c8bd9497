"""Fixtures for the AMQP 1.0 transport's tests (filled in with the driver)."""
