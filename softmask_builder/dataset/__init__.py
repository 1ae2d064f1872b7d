"""A dataset build: the plan (split by patient, shards fixed before any pixel is read), the
parallel shard jobs, what they produced, the release files and their verification, the counting
of what was left out, and the one-build-per-folder lock."""
