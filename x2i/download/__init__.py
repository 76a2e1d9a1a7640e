"""The safe URL downloader (fetch: one URL, pinned addresses, one deadline per attempt) and the run that writes
img2dataset-style shards from a URL list (run: bounded memory, per-host breaker)."""
