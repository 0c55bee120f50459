"""The terminal app, on top of the engine: it launches `mlmlab run` and reads the database."""
