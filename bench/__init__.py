"""`make bench`: the fleet's measured latency and throughput, next to the raw-ZeroMQ floor."""
