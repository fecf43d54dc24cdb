"""Redis URLs naming several hosts: the seed nodes of one Redis Cluster.

Written the way libpq writes several hosts, ``redis://[user:password@]host1:port1,host2:port2[/db][?…]``,
so a cluster whose first node is down when a process starts is still found through the others. Every
host shares the URL's credentials, database and TLS parameters.
"""

from __future__ import annotations


def _parts(url: str) -> tuple[str, str, str, str] | None:
    """(scheme, "userinfo@" or "", hosts, the rest from the path on); None without a scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:end].rpartition("@")
    return scheme, userinfo + at, hosts, rest[end:]


def one_url_per_host(url: str) -> list[str]:
    """The URL once per host it names, in order; an ordinary URL (or ``unix://``) comes back alone.

    Raises ValueError for an empty host in the list (``h1,,h2``).
    """
    parts = _parts(url)
    if parts is None or parts[0] == "unix" or "," not in parts[2]:
        return [url]
    scheme, auth, hosts, tail = parts
    names = [h.strip() for h in hosts.split(",")]
    if not all(names):
        raise ValueError(f"empty host in the Redis URL's host list {hosts!r}")
    return [f"{scheme}://{auth}{h}{tail}" for h in names]


def redacted(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = _parts(url)
    if parts is None or ":" not in parts[1]:
        return url
    scheme, auth, hosts, tail = parts
    return f"{scheme}://{auth.partition(':')[0]}:***@{hosts}{tail}"
