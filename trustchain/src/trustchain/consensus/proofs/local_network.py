"""A one-machine proving network: what a node needs to make and check four-proof bundles alone.

A :class:`LocalNetwork` lives in one directory and a TrustChain key store. It holds a real
certificate hierarchy, a transparency log and a stake registry of its own, so that the bundles
it makes verify at ``FULL`` trust under its own trust store -- exactly as they would under a
federation's, just with this machine as the federation. The ``trustchain proofs`` commands, the
demo, the tests and the benchmarks use it. It is not a substitute for the network: only this
machine trusts its root, and its stake registry is signed by this machine alone (the ledger
makes stake consensus-backed).

Layout of the directory (everything created on first :meth:`LocalNetwork.open`)::

    ca/                  the CA database: root ``local-root``, entity CA ``local``
                         (namespace ``local.hypermesh``)
    ct/log.db            the transparency log every certificate is logged in (its SCT embedded)
    stake.db             the stake registry
    plots/               one chiapos plot per ``k``, made on first use, bound to the node key

Keys in the key store: ``ca/local-root`` and ``ca/local`` (the CAs), ``proofs/ct-log`` (the
log), ``proofs/stake-registry`` (the registry) and ``proofs/node`` (the node: it stores the
assets, owns them and stakes on them). The node certificate ``node.local.hypermesh`` (the CA's
default leaf validity) is reissued when less than a third of its lifetime is left.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final

from cryptography import x509

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.store import CertificateStatus
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.consensus.proofs import challenges, custody
from trustchain.consensus.proofs.bundle import (
    PreviousState,
    ValidationContext,
    ValidationResult,
    prove_four_proofs,
    validate_four_proofs,
)
from trustchain.consensus.proofs.plots import (
    Plot,
    create_plot,
    find_plots,
    open_plot,
    plot_filename,
)
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.stake import StakeEntry, StakeNotFound, StakeRegistry
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import VerifyKey
from trustchain.ct.log import TransparencyLog

__all__ = [
    "DEFAULT_INITIAL_STAKE",
    "LOCAL_NAMESPACE",
    "NODE_NAME",
    "LocalNetwork",
]

#: The entity CA's DNS namespace; the node certificate is ``node.`` under it.
LOCAL_NAMESPACE: Final = "local.hypermesh"
#: The node certificate's name.
NODE_NAME: Final = f"node.{LOCAL_NAMESPACE}"
#: The balance a new local network records for its node.
DEFAULT_INITIAL_STAKE: Final = 1_000_000
_ROOT: Final = "local-root"
_ENTITY: Final = "local"
_NODE_KEY: Final = "proofs/node"
_LOG_KEY: Final = "proofs/ct-log"
_REGISTRY_KEY: Final = "proofs/stake-registry"
#: A node certificate is replaced once less than this fraction of its lifetime is left.
_RENEW_WHEN_LEFT: Final = 1 / 3
#: The address and zone a local node states in its space proofs.
_LOCAL_ADDRESS: Final = common_pb2.NetworkAddress(
    ip=bytes(15) + b"\x01", port=4433, transport=common_pb2.TRANSPORT_QUIC
)
_LOCAL_ZONE: Final = "local"


class LocalNetwork:
    """A node with its own CA, transparency log and stake registry (see the module docs).

    Open it with :meth:`open` (the key store must be unlocked); close it (or use ``with``) to
    close its databases. It does not own the key store.
    """

    def __init__(
        self,
        directory: Path,
        keys: KeyStore,
        log: TransparencyLog,
        ca: CertificateAuthority,
        registry: StakeRegistry,
    ) -> None:
        self._directory = directory
        self._keys = keys
        self._log = log
        self._ca = ca
        self._registry = registry

    @classmethod
    def open(
        cls,
        directory: Path | str,
        keys: KeyStore,
        *,
        initial_stake: int = DEFAULT_INITIAL_STAKE,
    ) -> LocalNetwork:
        """Open the network in ``directory``, creating whatever is missing: the keys, the CAs,
        the log, the registry (with ``initial_stake`` recorded for the node) and the node
        certificate. Plots are made by :meth:`plot` when first asked for."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        for name in (_NODE_KEY, _LOG_KEY, _REGISTRY_KEY):
            if not any(info.name == name for info in keys.list()):
                keys.generate(name)
        log = TransparencyLog.open(directory / "ct" / "log.db", keys.signing_key(_LOG_KEY))
        try:
            ca = CertificateAuthority(directory / "ca", keys, log)
            try:
                registry = StakeRegistry.open(
                    directory / "stake.db", registry_key=_verify_key(keys, _REGISTRY_KEY)
                )
            except BaseException:
                ca.close()
                raise
        except BaseException:
            log.close()
            raise
        network = cls(directory, keys, log, ca, registry)
        try:
            network._initialise(initial_stake)
        except BaseException:
            network.close()
            raise
        return network

    def _initialise(self, initial_stake: int) -> None:
        if self._ca.store.root() is None:
            self._ca.init_root(_ROOT)
            self._ca.issue_intermediate(_ENTITY, LOCAL_NAMESPACE)
        try:
            self._registry.entry(self.node_key.key_id)
        except StakeNotFound:
            self.credit(initial_stake)

    def close(self) -> None:
        try:
            self._registry.close()
        finally:
            try:
                self._ca.close()
            finally:
                self._log.close()

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- identity -------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def node_key(self) -> VerifyKey:
        """The node's public key (its id is the node's peer id and the stake owner id)."""
        return _verify_key(self._keys, _NODE_KEY)

    def node_chain(self, at: datetime | None = None) -> tuple[x509.Certificate, ...]:
        """The node's certificate chain, leaf first, without the root: the newest valid node
        certificate with at least a third of its lifetime left at ``at``, else a new one."""
        now = at or datetime.now(UTC)
        for record in reversed(self._ca.store.certificates_for_key(self.node_key.key_id)):
            lifetime = record.not_after - record.not_before
            if (
                record.status is CertificateStatus.VALID
                and record.not_before <= now
                and record.not_after - now > lifetime * _RENEW_WHEN_LEFT
            ):
                return (record.certificate(), *self._ca.chain_for(record.serial))
        issued = self._ca.issue(
            _ENTITY, "node", NODE_NAME, subject_key=self.node_key, dns_names=[NODE_NAME]
        )
        return (issued.certificate, *issued.chain)

    def sign(self, message: bytes) -> bytes:
        """The node's signature envelope over ``message``."""
        return self._keys.sign(_NODE_KEY, message).signature.to_bytes()

    def asset_id(self, name: str) -> bytes:
        """The id of the node's asset ``name``."""
        return challenges.asset_id(self.node_key.key_id, name)

    # -- trust and stake ------------------------------------------------------------------

    def trust_store(self) -> TrustStore:
        """A trust store for this network: its root as the only anchor, the entity CA, fresh
        CRLs of both and the log's key -- everything a ``FULL`` verdict needs."""
        root = self._ca.certificate(self._ca.ca().serial)
        store = TrustStore([TrustAnchor(root, "local")], log_keys=[self._log.public_key])
        store.add_certificate(self._ca.certificate(self._ca.ca(_ENTITY).serial))
        store.add_crl(self._ca.crl())
        store.add_crl(self._ca.crl(_ENTITY))
        return store

    @property
    def registry(self) -> StakeRegistry:
        return self._registry

    def credit(self, balance: int) -> StakeEntry:
        """Record ``balance`` as the node's stake balance (signed by the registry key)."""

        def sign(message: bytes) -> bytes:
            return self._keys.sign(_REGISTRY_KEY, message).signature.to_bytes()

        return self._registry.credit(self.node_key.key_id, balance, sign)

    def context(self, preset: Preset, at: datetime | None = None) -> ValidationContext:
        """What a validator of this network checks against, with ``preset``'s thresholds."""
        return ValidationContext(preset, self.trust_store(), self._registry, at)

    # -- proving --------------------------------------------------------------------------

    def plot(self, k: int) -> Plot:
        """The node's plot of size ``k`` in ``plots/``, made now if there is none (k=18 takes
        about a second and 4 MiB, each step of k doubles both)."""
        directory = self._directory / "plots"
        directory.mkdir(exist_ok=True)
        found = find_plots(directory, k)
        if found:
            return open_plot(found[0], self.node_key)
        plot = create_plot(directory, self.node_key, k)
        assert plot.path.name == plot_filename(plot.k, plot.plot_id)
        return plot

    def prove(
        self,
        name: str,
        data: bytes,
        *,
        preset: Preset,
        previous: PreviousState | None = None,
        amount: int | None = None,
        resources: common_pb2.ResourceSpec | None = None,
    ) -> common_pb2.FourProof:
        """The four proofs of the next version of the node's asset ``name`` whose content is
        ``data``: version 0 when ``previous`` is None, else ``previous.version + 1``.

        ``amount``: the stake (default: the preset's minimum). ``resources``: what the asset
        offers (default: its storage, ``len(data)`` bytes).
        """
        chain = self.node_chain()
        offered = resources or common_pb2.ResourceSpec(storage_bytes=len(data))
        return prove_four_proofs(
            asset=self.asset_id(name),
            previous=previous,
            chunks=custody.chunk(data),
            resources=offered,
            amount=preset.min_stake if amount is None else amount,
            preset=preset,
            plot=self.plot(preset.plot_k),
            storage_chain=chain,
            storage_sign=self.sign,
            address=_LOCAL_ADDRESS,
            zone=_LOCAL_ZONE,
            owner_chain=chain,
            owner_sign=self.sign,
        )

    def validate(
        self,
        bundle: common_pb2.FourProof,
        *,
        preset: Preset,
        previous: PreviousState | None = None,
        at: datetime | None = None,
    ) -> ValidationResult:
        """:func:`.validate_four_proofs` under this network's trust store and registry."""
        return validate_four_proofs(bundle, previous=previous, context=self.context(preset, at))


def _verify_key(keys: KeyStore, name: str) -> VerifyKey:
    key = keys.public_key(name)
    if not isinstance(key, VerifyKey):
        raise TypeError(f"key {name} is not a signing key")
    return key
