"""Infrastructure under every other folder: atomic writes, typed config reading, boundary checks,
the parallel task runner, and the table of moved module paths. Imports nothing above it."""
