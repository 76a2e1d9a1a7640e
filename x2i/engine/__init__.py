"""The build engine: recipes compiled into a plan, steps over iterators, executors (local pool, Ray), atomic
shard writing, the folder lock and the build's manifest."""
