"""The wire proxy: sans-I/O protocol core, capture, the Redis sink, and the event contract its readers share."""
