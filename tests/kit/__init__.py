"""What more than one test directory needs, each in one module named for what it does.

The machine's peers: services (its PostgreSQL and Redis), databases (scratch databases on it), backends
(its pg_stat_activity), prefixes (keys under a test's prefix). Private peers: pgcluster (a PostgreSQL
server of a test's own), redisserver (a redis-server of a test's own), certs (throw-away CAs and
certificates for them), rediscluster (a Redis Cluster of a test's own).

Processes and waiting: processes (`fasterdata` commands as child processes), ports (free ports, listeners),
polling (bounded waits), procfs (what /proc says of a process).

What comes out: streams (a stream read back as events), metrics (/metrics over HTTP), rawclient (a
hand-driven PostgreSQL client), pgbench (running it and reading its summary).

Analysis: eventwriter (events written as the proxy writes them), analysis (in-process workers and what
they leave), workload (a scripted shop and ledger), spikes (an anomaly scenario for any worker).

Test modules import from here or from their own directory's kit, never from another test module.
"""
