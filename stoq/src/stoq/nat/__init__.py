"""NAT traversal for STOQ: STUN (RFC 8489, compatible with RFC 5389 and RFC 5769) and NAT
behaviour discovery (RFC 5780).

* :mod:`stoq.nat.stun` — the sans-IO STUN message codec: message and attribute encoding and
  strict decoding, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, the address and
  error attribute values, short- and long-term credential keys, and RFC 7983 demultiplexing.
* :mod:`stoq.nat.stun_server` — the Binding server: a sans-IO core deciding each answer and an
  asyncio UDP shell, with RFC 5780's alternate address and port (OTHER-ADDRESS,
  RESPONSE-ORIGIN, CHANGE-REQUEST), optional short-term credentials and a per-source rate limit.
* :mod:`stoq.nat.stun_client` — Binding transactions with RFC 8489 retransmissions (sans-IO
  core plus a socket driver).
* :mod:`stoq.nat.discovery` — RFC 5780 mapping and filtering behaviour discovery.
* :mod:`stoq.nat.turn_server` — the TURN relay (RFC 8656) over UDP, TCP and TLS (relaying to
  peers over UDP): long-term credentials with
  stateless nonces, allocations (IPv4 and IPv6 relays), permissions, channels, quotas and
  lifetimes, and the peer address policy that refuses special-purpose addresses by default.
* :mod:`stoq.nat.turn_client` — the TURN client (sans-IO core plus asyncio shell) over UDP,
  TCP and TLS.
* :mod:`stoq.nat.channel_data` — TURN ChannelData framing, shared by both;
  :mod:`stoq.nat.framing` — splitting a TCP/TLS byte stream into STUN and ChannelData frames.

* :mod:`stoq.nat.punch` — ICE-style hole punching (RFC 8445 priorities, paced and signed
  connectivity checks, peer-reflexive learning, regular nomination) over one or more UDP
  sockets, with multi-port ("birthday") probing when one side's NAT maps per destination.
* :mod:`stoq.nat.rendezvous` — the signalling service over STOQ: nodes register by their
  authenticated peer id and relay opaque signals to each other through a bootstrap node.
* :mod:`stoq.nat.signalling` — the session descriptions peers exchange through it (candidates,
  ICE credentials, mapping behaviour, restarts).
* :mod:`stoq.nat.peer_link` — the virtual socket a STOQ connection to a peer runs over: direct
  (the punched socket, STUN and QUIC demultiplexed on it) or relayed (TURN), with keepalives and
  a switch between the two that the connection never sees.
* :mod:`stoq.nat.traversal` — all of it end to end: a STOQ connection to a peer known only by
  its peer id (gather, exchange, relay first, upgrade to direct, ICE restarts on NAT rebinding).

Not here: RFC 6062 TCP allocations (TCP relaying to peers), candidates from more than one
local interface, IPv6 candidates in the traversal agent (the STUN/TURN pieces do IPv6).
"""
