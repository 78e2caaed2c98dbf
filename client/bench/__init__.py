"""The benchmark behind scripts/bench (docs/benchmarks.md).

It drives clusters only through public interfaces: medkv through
client.AsyncClient and scripts/cluster, etcd through its gRPC API, never
node internals.

    stats    percentiles and CPU accounting (/proc/PID/stat)
    load     the asyncio load generator: one point = warm-up + measured window
    targets  medkv and the gRPC echo as load-generator targets
    etcd     etcd installed, started and driven (--compare etcd)
    echo     the echo server process
    local    local clusters, free ports, pids of listening ports
    report   the tables, JSON and plot
    cli      the command line (python -m client.bench)
"""
