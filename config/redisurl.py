"""Redis URLs naming several hosts: the seed nodes of one Redis Cluster.

Written the way libpq writes several hosts, ``redis://[user:password@]host1:port1,host2:port2[/db][?…]``,
so a cluster whose first node is down when a process starts is still found through the others. Every
host shares the URL's credentials, database and TLS parameters.
"""

from __future__ import annotations


def one_url_per_host(url: str) -> list[str]:
    """The URL once per host it names, in order; an ordinary URL (or ``unix://``) comes back alone.

    Raises ValueError for an empty host in the list (``h1,,h2``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "unix":
        return [url]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    parts = hosts.split(",")
    if not all(p.strip() for p in parts):
        raise ValueError(f"empty host in the Redis URL's host list {hosts!r}")
    return [f"{scheme}://{userinfo}{at}{p.strip()}{tail}" for p in parts]


def redacted(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}{rest[end:]}"
