"""HTTP layer: thin routes over the engine and the database."""
