"""DNS for STOQ: TrustChain's federated names seen through ordinary DNS.

* :mod:`stoq.dns.server` — the authoritative DNS front-end: a sans-IO
  :class:`~stoq.dns.server.Authority` that answers standard DNS queries (A, AAAA, TXT, SRV, SOA)
  from verified TrustChain name records, and :class:`~stoq.dns.server.DnsServer`, its asyncio
  shell on UDP and TCP (``stoq dns-server``).
* :mod:`stoq.dns.resolver` — the resolver chain (TrustChain names, then or before traditional
  DNS, by policy; ``stoq resolve``).
* :mod:`stoq.dns.cache` — the TTL cache (positive and negative entries) the resolver uses.
* :mod:`stoq.dns.replication` — name records replicated between nodes: a node pulls a peer's
  record set over an authenticated STOQ connection and merges it, verifying every record with
  its own trust (``stoq names-pull``).

The package imports neither module itself: each pulls in only what it needs.
"""

from __future__ import annotations
