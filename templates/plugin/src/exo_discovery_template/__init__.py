"""An exo-discovery plugin that reports the peers listed in a JSON file."""
