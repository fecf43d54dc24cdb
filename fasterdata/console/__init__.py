"""`fasterdata console`: a web page over what the analyzers keep in Redis."""
