"""One owner per file format: shards (HDF5 schema and its lazy reader), the release folder
(file names, manifest, SHA256SUMS), recipes, and the metadata derived from a manifest.
Every reader of these files, in both packages, goes through these modules."""
