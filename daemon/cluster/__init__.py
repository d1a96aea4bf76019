"""Cluster: one room across several salond nodes, Redis as the control plane (docs/cluster.md).

Only imported when ``[cluster] redis_url`` is set; without it salond is one process.
"""
