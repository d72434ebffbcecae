"""NAT traversal for STOQ: STUN (RFC 8489, compatible with RFC 5389 and RFC 5769) and NAT
behaviour discovery (RFC 5780).

:mod:`stoq.nat.stun` is the sans-IO STUN message codec: message and attribute encoding and strict
decoding, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, the address and error
attribute values, short- and long-term credential keys, and RFC 7983 demultiplexing.
"""
