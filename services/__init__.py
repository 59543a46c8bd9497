"""Reference services (a small Nova) built only on rpclib's public API."""
