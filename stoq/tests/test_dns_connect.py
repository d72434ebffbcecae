"""``stoq.endpoint.connect`` by a TrustChain name: Happy Eyeballs through our resolver.

A STOQ server on 127.0.0.1 whose certificate names ``node1.bank.hypermesh``; a signed TrustChain
record says that name is at 127.0.0.1 (and at an IPv6 address nothing listens on, which Happy
Eyeballs tries first and gives up). No DNS server is involved: the policy is trustchain-only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from stoq.dns.resolver import HappyEyeballsResolver, Policy, RecordSetNames, Resolver
from stoq.endpoint import Endpoint, connect
from stoq.errors import ResolutionError
from stoq.identity import NodeIdentity
from trustchain.naming.records import NameRecord, sign_record
from trustchain.naming.zone import RecordSet

from .conftest import SERVER_NAME, Pki


def _names(pki: Pki, *addresses: str) -> RecordSetNames:
    signer = pki.node(SERVER_NAME)
    now = datetime.now(UTC)
    record = NameRecord(
        SERVER_NAME,
        signer.peer_id,
        addresses,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    )
    signed = sign_record(record, signer.signing_key, signer.chain)
    return RecordSetNames(RecordSet((signed,), (), ()), pki.trust_store())


def test_connect_by_a_trustchain_name(pki: Pki, server_identity: NodeIdentity) -> None:
    async def main() -> None:
        names = _names(pki, "127.0.0.1", "::1")
        resolver = HappyEyeballsResolver(Resolver(Policy.TRUSTCHAIN_ONLY, names=names))
        async with await Endpoint.listen(pki.config(server_identity), "127.0.0.1", 0) as server:
            client = pki.config(pki.node("client9.bank.hypermesh"))
            connection = await connect(client, SERVER_NAME, server.port, resolver=resolver)
            assert connection.remote_address == ("127.0.0.1", server.port)
            assert connection.peer.name == SERVER_NAME
            await connection.close()

    asyncio.run(main())


def test_an_unknown_name_fails_to_resolve(pki: Pki) -> None:
    async def main() -> None:
        names = _names(pki, "127.0.0.1")
        resolver = HappyEyeballsResolver(Resolver(Policy.TRUSTCHAIN_ONLY, names=names))
        client = pki.config(pki.node("client9.bank.hypermesh"))
        with pytest.raises(ResolutionError) as caught:
            await connect(client, "nobody.bank.hypermesh", 4433, resolver=resolver)
        assert "NameNotFound: nobody.bank.hypermesh: not found" in str(caught.value)

    asyncio.run(main())
