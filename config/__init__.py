"""Settings: one model per command, read from a YAML file < FASTERDATA_* environment < flags."""
