"""The conductor: the one service that owns the database."""
