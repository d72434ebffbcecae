"""A local federation: everything a multi-process validator network on one machine needs.

:meth:`LocalFederation.create` makes, in one directory and one call, a real TrustChain
certificate hierarchy with a transparency log, the homes of the validators and of the owner
nodes (each with its own key store and node certificate), one stake registry per validator
and the genesis committee. Every process of the network (the validators, the owner's client,
the demo) re-opens it with :meth:`LocalFederation.open`; nothing but files is shared.

It is a federation in miniature: one root CA, two entity CAs confined to their namespaces
(:data:`VALIDATOR_NAMESPACE` for the validators, :data:`NODE_NAMESPACE` for owner and storage
nodes), every certificate logged with its SCT embedded, so every chain validates at ``FULL``
trust under :meth:`LocalFederation.trust_store`. Unlike a real federation, the CA keys, the
log key and the registry key sit in one key store in the same directory (protected by a key
file), and the validators' stake registries are copies credited by that one registry key.

Layout of the directory (``<v>``: a validator's name, ``<o>``: an owner's)::

    federation.json       the manifest (below); written last, so its presence marks a
                          complete federation
    keys/                 the federation's key store (key file): ca/<CA name> for the three
                          CAs, federation/ct-log (the log), federation/stake-registry
    ca/                   the CA database
    ct/log.db             the transparency log every certificate is logged in
    trust/root.pem        the root certificate (the only trust anchor)
    trust/<CA>.pem        the entity CAs' certificates (validators.pem, nodes.pem)
    trust/<CA>.crl.pem    each CA's full CRL (root.crl.pem, validators.crl.pem, nodes.crl.pem)
    trust/ct-log.key      the transparency log's public key (a trustchain public key envelope)
    trust/stake-registry.key   the stake registry's public key (likewise)
    genesis.pb            the genesis committee: hypermesh.v1.Committee, epoch 0,
                          deterministic protobuf encoding
    validators/<v>/keys/  the validator's key store (key file), its signing key "node"
    validators/<v>/chain.pem   its node certificate, then the entity CA certificate (PEM)
    validators/<v>/stake.db    its stake registry: every owner credited
    owners/<o>/keys/      the owner node's key store (key file), its signing key "node"
    owners/<o>/chain.pem  its node certificate chain (it stores and owns the assets)
    owners/<o>/plots/     its chiapos plots, one per k, made on first use

The manifest is JSON (UTF-8, sorted keys)::

    {"format": "hypermesh/local-federation/v1",
     "host": "127.0.0.1",                # where every member listens (an IP literal)
     "zone": "local",                    # the zone owners state in their space proofs
     "validators": [{"name", "dns_name", "key_id" (hex), "port", "stake"}, ...],
     "owners": [{"name", "dns_name", "key_id" (hex), "port", "balance"}, ...]}

Validators are listed in creation order; the genesis committee sorts them by validator id
(the key id of their signing key). Ports are UDP ports (STOQ runs over QUIC) found free on
``host`` at creation and recorded; nothing holds them afterwards.

Lifetimes: node certificates live :data:`~trustchain.ca.profiles.DEFAULT_LEAF_VALIDITY` (24 h)
unless ``leaf_validity`` says otherwise; the CRLs written at creation last as long
(:meth:`LocalFederation.publish_crls` writes fresh ones). A federation is for a test or a demo
run: once its node certificates expire its genesis committee no longer validates; create a new
one.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.hybrid import certificate_public_key
from trustchain.ca.profiles import DEFAULT_LEAF_VALIDITY, MAX_LEAF_VALIDITY
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.consensus.committee import Committee, Member
from trustchain.consensus.proofs import challenges, custody
from trustchain.consensus.proofs.bundle import (
    PreviousState,
    ValidationContext,
    prove_four_proofs,
)
from trustchain.consensus.proofs.plots import Plot, create_plot, find_plots, open_plot
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind
from trustchain.consensus.proofs.stake import StakeRegistry
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import VerifyKey
from trustchain.ct.log import TransparencyLog
from trustchain.errors import MalformedData, TrustChainError, UnknownAlgorithm
from trustchain.files import write_atomically

__all__ = [
    "DEFAULT_BALANCE",
    "FORMAT",
    "MANIFEST",
    "NODE_KEY",
    "NODE_NAMESPACE",
    "VALIDATOR_NAMESPACE",
    "FederationError",
    "LocalFederation",
    "MemberSetup",
    "OwnerSetup",
    "ValidatorSetup",
]

#: The manifest's ``format`` value.
FORMAT: Final = "hypermesh/local-federation/v1"
#: The manifest's file name in the federation directory.
MANIFEST: Final = "federation.json"
#: The root CA's name (also the trust anchor's name in :meth:`LocalFederation.trust_store`).
ROOT_CA: Final = "hypermesh-local-root"
#: The validators' entity CA and its namespace.
VALIDATOR_CA: Final = "validators"
VALIDATOR_NAMESPACE: Final = "validators.hypermesh"
#: The owner and storage nodes' entity CA and its namespace.
NODE_CA: Final = "nodes"
NODE_NAMESPACE: Final = "nodes.hypermesh"
#: The name of every member's signing key in its own key store.
NODE_KEY: Final = "node"
#: The balance every owner is credited with in every validator's stake registry.
DEFAULT_BALANCE: Final = 1_000_000
#: The zone owners state in their space proofs.
ZONE: Final = "local"
_LOG_KEY: Final = "federation/ct-log"
_REGISTRY_KEY: Final = "federation/stake-registry"
_GENESIS: Final = "genesis.pb"
_TRUST: Final = "trust"
_CHAIN: Final = "chain.pem"
_LOG_KEY_FILE: Final = "ct-log.key"
_REGISTRY_KEY_FILE: Final = "stake-registry.key"
_NAME_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_MAX_MEMBERS: Final = 64


class FederationError(TrustChainError):
    """A local federation cannot be created or opened: a directory that is not empty (create),
    a missing or malformed manifest or file (open), an unknown member name, bad arguments."""


@dataclass(frozen=True)
class MemberSetup:
    """A member of the federation: its ``name`` (a DNS label), the DNS name its certificate
    carries, its home directory, its signing key's id, and where it listens (``host``,
    ``port``)."""

    name: str
    dns_name: str
    home: Path
    key_id: bytes
    host: str
    port: int

    @property
    def keystore_path(self) -> Path:
        """The home of its key store (protected by a key file; the key is :data:`NODE_KEY`)."""
        return self.home / "keys"

    @property
    def key_name(self) -> str:
        return NODE_KEY

    @property
    def chain_path(self) -> Path:
        return self.home / _CHAIN

    def chain(self) -> tuple[x509.Certificate, ...]:
        """Its certificate chain, leaf first, without the root (read from its home)."""
        return _read_pem_certificates(self.chain_path)

    def open_keys(self) -> KeyStore:
        """Open its key store (the caller closes it)."""
        return KeyStore.open(self.keystore_path, create=False)

    def address(self) -> common_pb2.NetworkAddress:
        """Its address as ``hypermesh.v1.NetworkAddress`` (QUIC)."""
        return common_pb2.NetworkAddress(
            ip=ipaddress.ip_address(self.host).packed,
            port=self.port,
            transport=common_pb2.TRANSPORT_QUIC,
        )


@dataclass(frozen=True)
class ValidatorSetup(MemberSetup):
    """A validator: a member with voting ``stake``; its id is its signing key's id."""

    stake: int

    @property
    def validator_id(self) -> bytes:
        return self.key_id

    @property
    def registry_path(self) -> Path:
        """Its own copy of the stake registry."""
        return self.home / "stake.db"


@dataclass(frozen=True)
class OwnerSetup(MemberSetup):
    """An owner node (it stores its assets and owns them), credited with ``balance``."""

    balance: int

    @property
    def plots_path(self) -> Path:
        return self.home / "plots"

    def asset_id(self, asset_name: str) -> bytes:
        """The id of this owner's asset ``asset_name``."""
        return challenges.asset_id(self.key_id, asset_name)


class LocalFederation:
    """A federation directory (see the module docs): create it with :meth:`create`, open it
    with :meth:`open`.

    The object reads files on demand; the key stores it opens for :meth:`signer` and
    :meth:`prove` stay open until :meth:`close` (or the end of a ``with`` block). Safe to use
    from several threads.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str,
        zone: str,
        log_key: VerifyKey,
        registry_key: VerifyKey,
        validators: tuple[ValidatorSetup, ...],
        owners: tuple[OwnerSetup, ...],
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._directory = directory
        self._host = host
        self._zone = zone
        self._log_key = log_key
        self._registry_key = registry_key
        self._validators = validators
        self._owners = owners
        self._keys: dict[str, KeyStore] = {}
        self._lock = threading.RLock()

    # -- creating and opening ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path | str,
        *,
        validators: int = 4,
        owners: Sequence[str] = ("node",),
        host: str = "127.0.0.1",
        stakes: Sequence[int] | None = None,
        balance: int = DEFAULT_BALANCE,
        leaf_validity: timedelta = DEFAULT_LEAF_VALIDITY,
    ) -> LocalFederation:
        """Create a federation in ``directory`` (absent or empty) and return it opened.

        ``validators``: how many (named ``validator-0``, ``validator-1``...); ``owners``: the
        owner nodes' names (DNS labels); ``host``: the IP address everyone listens on;
        ``stakes``: each validator's voting stake (default 1 each); ``balance``: what each owner
        is credited with in every registry; ``leaf_validity``: the node certificates' lifetime.
        :class:`FederationError` for a non-empty directory or bad arguments. Should creation
        fail part-way, the directory is left without a manifest (it is no federation; remove
        it).
        """
        directory = Path(directory).expanduser()
        if isinstance(owners, str):
            raise FederationError(f"owners is a sequence of names, not the string {owners!r}")
        names = [f"validator-{index}" for index in range(validators)]
        weights = list(stakes) if stakes is not None else [1] * validators
        _check_creation(directory, names, list(owners), host, weights, balance)
        if not timedelta(0) < leaf_validity <= MAX_LEAF_VALIDITY:
            raise FederationError(f"leaf_validity must be positive and at most {MAX_LEAF_VALIDITY}")
        directory.mkdir(parents=True, exist_ok=True)
        ports = _free_udp_ports(host, len(names) + len(owners))
        with KeyStore.open(directory / "keys") as keys:
            keys.generate(_LOG_KEY)
            keys.generate(_REGISTRY_KEY)
            log_key = _verify_key(keys, _LOG_KEY)
            registry_key = _verify_key(keys, _REGISTRY_KEY)
            with (
                TransparencyLog.open(
                    directory / "ct" / "log.db", keys.signing_key(_LOG_KEY)
                ) as log,
                CertificateAuthority(directory / "ca", keys, log, crl_validity=leaf_validity) as ca,
            ):
                ca.init_root(ROOT_CA)
                ca.issue_intermediate(VALIDATOR_CA, VALIDATOR_NAMESPACE)
                ca.issue_intermediate(NODE_CA, NODE_NAMESPACE)
                _write_trust(directory, ca, log_key, registry_key)
                validator_setups = []
                for name, stake, port in zip(names, weights, ports[: len(names)], strict=True):
                    home = directory / "validators" / name
                    dns_name = f"{name}.{VALIDATOR_NAMESPACE}"
                    key_id = _new_member(ca, VALIDATOR_CA, home, dns_name, host, leaf_validity)
                    validator_setups.append(
                        ValidatorSetup(name, dns_name, home, key_id, host, port, stake)
                    )
                owner_setups = []
                for name, port in zip(owners, ports[len(names) :], strict=True):
                    home = directory / "owners" / name
                    dns_name = f"{name}.{NODE_NAMESPACE}"
                    key_id = _new_member(ca, NODE_CA, home, dns_name, host, leaf_validity)
                    owner_setups.append(
                        OwnerSetup(name, dns_name, home, key_id, host, port, balance)
                    )

            def sign_entry(message: bytes) -> bytes:
                return keys.sign(_REGISTRY_KEY, message).signature.to_bytes()

            for validator in validator_setups:
                with StakeRegistry.open(
                    validator.registry_path, registry_key=registry_key
                ) as registry:
                    for owner in owner_setups:
                        registry.credit(owner.key_id, owner.balance, sign_entry)
        federation = cls(
            directory,
            host=host,
            zone=ZONE,
            log_key=log_key,
            registry_key=registry_key,
            validators=tuple(validator_setups),
            owners=tuple(owner_setups),
        )
        write_atomically(
            directory / _GENESIS,
            federation._genesis_committee().to_message().SerializeToString(deterministic=True),
        )
        write_atomically(directory / MANIFEST, federation._manifest())
        return federation

    @classmethod
    def open(cls, directory: Path | str) -> LocalFederation:
        """Open the federation in ``directory``; :class:`FederationError` if there is none or
        its manifest is malformed."""
        directory = Path(directory).expanduser()
        path = directory / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise FederationError(f"no local federation in {directory} (no {MANIFEST})") from None
        except (OSError, ValueError) as exc:
            raise FederationError(f"{path} is not readable JSON: {exc}") from exc
        return cls._from_manifest(directory, manifest)

    @classmethod
    def _from_manifest(cls, directory: Path, manifest: object) -> LocalFederation:
        where = directory / MANIFEST
        try:
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise FederationError(f"{where} is not a {FORMAT} manifest")
            host = manifest["host"]
            zone = manifest["zone"]
            if not isinstance(host, str) or not isinstance(zone, str):
                raise FederationError(f"{where}: host and zone must be strings")
            ipaddress.ip_address(host)
            validators = tuple(
                ValidatorSetup(
                    *_member_from(entry, directory / "validators", host),
                    stake=_positive(entry["stake"], "stake"),
                )
                for entry in manifest["validators"]
            )
            owners = tuple(
                OwnerSetup(
                    *_member_from(entry, directory / "owners", host),
                    balance=_positive(entry["balance"], "balance"),
                )
                for entry in manifest["owners"]
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FederationError(f"{where} is malformed: {exc!r}") from exc
        log_key = _read_key(directory / _TRUST / _LOG_KEY_FILE)
        registry_key = _read_key(directory / _TRUST / _REGISTRY_KEY_FILE)
        names = [m.name for m in (*validators, *owners)]
        if not validators or len(set(names)) != len(names):
            raise FederationError(f"{where}: no validators, or member names repeat")
        return cls(
            directory,
            host=host,
            zone=zone,
            log_key=log_key,
            registry_key=registry_key,
            validators=validators,
            owners=owners,
        )

    def close(self) -> None:
        """Close the key stores opened for signing (the federation stays usable: they are
        opened again when needed)."""
        with self._lock:
            stores, self._keys = list(self._keys.values()), {}
        for store in stores:
            store.close()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- members ----------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def host(self) -> str:
        return self._host

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def namespaces(self) -> tuple[str, str]:
        """The DNS namespaces of the validators and of the owner nodes (a STOQ peer policy
        admits exactly these)."""
        return (VALIDATOR_NAMESPACE, NODE_NAMESPACE)

    @property
    def validators(self) -> tuple[ValidatorSetup, ...]:
        """The validators in creation order (``validator-0`` first)."""
        return self._validators

    @property
    def owners(self) -> tuple[OwnerSetup, ...]:
        return self._owners

    def validator(self, name: str) -> ValidatorSetup:
        """The validator ``name``; :class:`FederationError` if there is none."""
        for validator in self._validators:
            if validator.name == name:
                return validator
        raise FederationError(f"no validator named {name!r} in {self._directory}")

    def validator_at(self, home: Path | str) -> ValidatorSetup:
        """The validator whose home is ``home``; :class:`FederationError` if none is."""
        wanted = Path(home).expanduser().resolve()
        for validator in self._validators:
            if validator.home.resolve() == wanted:
                return validator
        raise FederationError(f"{home} is not the home of a validator of {self._directory}")

    def owner(self, name: str) -> OwnerSetup:
        """The owner node ``name``; :class:`FederationError` if there is none."""
        for owner in self._owners:
            if owner.name == name:
                return owner
        raise FederationError(f"no owner named {name!r} in {self._directory}")

    def _member(self, name: str) -> MemberSetup:
        for member in (*self._validators, *self._owners):
            if member.name == name:
                return member
        raise FederationError(f"no member named {name!r} in {self._directory}")

    def keys(self, member: str) -> KeyStore:
        """The key store of ``member`` (a validator's or owner's name), opened once and kept
        open until :meth:`close`."""
        with self._lock:
            store = self._keys.get(member)
            if store is None:
                store = self._member(member).open_keys()
                self._keys[member] = store
            return store

    def signer(self, member: str) -> Callable[[bytes], bytes]:
        """A function returning ``member``'s signature envelope over its argument (made with
        its key :data:`NODE_KEY`, the key its node certificate certifies)."""
        store = self.keys(member)

        def sign(message: bytes) -> bytes:
            return store.sign(NODE_KEY, message).signature.to_bytes()

        return sign

    # -- trust, committee, stake ------------------------------------------------------------

    @property
    def log_key(self) -> VerifyKey:
        """The transparency log's public key (its key id is the log id in every SCT)."""
        return self._log_key

    @property
    def registry_key(self) -> VerifyKey:
        """The key that signs every stake registry entry."""
        return self._registry_key

    def trust_store(self) -> TrustStore:
        """A new trust store for this federation: the root as the only anchor, the entity CAs
        as extra certificates, every CA's CRL as last published and the log's key -- all a
        ``FULL`` verdict needs. :class:`FederationError` if a trust file is missing or
        malformed."""
        trust = self._directory / _TRUST
        roots = _read_pem_certificates(trust / "root.pem")
        if len(roots) != 1:
            raise FederationError(f"{trust / 'root.pem'} holds {len(roots)} certificates, not 1")
        store = TrustStore([TrustAnchor(roots[0], ROOT_CA)], log_keys=[self._log_key])
        for name in (VALIDATOR_CA, NODE_CA):
            for certificate in _read_pem_certificates(trust / f"{name}.pem"):
                store.add_certificate(certificate)
        for name in ("root", VALIDATOR_CA, NODE_CA):
            store.add_crl(_read_pem_crl(trust / f"{name}.crl.pem"))
        return store

    def publish_crls(self) -> None:
        """Sign fresh CRLs of all three CAs (valid as long as the first ones were) and write
        them over the published ones; later :meth:`trust_store` calls use them."""
        with (
            KeyStore.open(self._directory / "keys", create=False) as keys,
            CertificateAuthority(
                self._directory / "ca", keys, crl_validity=self._crl_validity()
            ) as ca,
        ):
            _write_crls(self._directory, ca)

    def _crl_validity(self) -> timedelta:
        crl = _read_pem_crl(self._directory / _TRUST / "root.crl.pem")
        next_update = crl.next_update_utc
        if next_update is None:
            raise FederationError("the published root CRL has no nextUpdate")
        return next_update - crl.last_update_utc

    def genesis(self) -> ledger_pb2.Committee:
        """The genesis committee (epoch 0) as written at creation."""
        path = self._directory / _GENESIS
        committee = ledger_pb2.Committee()
        try:
            committee.ParseFromString(path.read_bytes())
        except FileNotFoundError:
            raise FederationError(f"{path} is missing") from None
        except DecodeError as exc:
            raise FederationError(f"{path} is not a Committee: {exc}") from exc
        return committee

    def committee(self, trust_store: TrustStore | None = None) -> Committee:
        """The genesis committee, every member's chain validated (under ``trust_store``,
        default :meth:`trust_store`)."""
        store = self.trust_store() if trust_store is None else trust_store
        return Committee.from_message(self.genesis(), store)

    def _genesis_committee(self) -> Committee:
        members = []
        for validator in self._validators:
            chain = validator.chain()
            members.append(
                Member(
                    validator_id=validator.validator_id,
                    key=_verify_key_of(validator),
                    chain=chain,
                    stake=validator.stake,
                    host=validator.host,
                    port=validator.port,
                    name=validator.dns_name,
                )
            )
        members.sort(key=lambda member: member.validator_id)
        return Committee(0, tuple(members))

    def registry_path(self, validator: str) -> Path:
        """Where validator ``validator``'s stake registry lives."""
        return self.validator(validator).registry_path

    def open_registry(self, validator: str) -> StakeRegistry:
        """Open validator ``validator``'s stake registry (the caller closes it)."""
        path = self.registry_path(validator)
        if not path.exists():
            raise FederationError(f"validator {validator} has no stake registry at {path}")
        return StakeRegistry.open(path, registry_key=self._registry_key)

    def context(
        self,
        validator: str,
        preset: Preset,
        *,
        trust_store: TrustStore | None = None,
        at: datetime | None = None,
    ) -> ValidationContext:
        """What validator ``validator`` checks four proofs against: ``preset``, the trust store
        (default :meth:`trust_store`), its own stake registry, opened here (close
        ``context.registry`` when done), and the time ``at`` (None: now)."""
        store = self.trust_store() if trust_store is None else trust_store
        return ValidationContext(preset, store, self.open_registry(validator), at)

    # -- proving ----------------------------------------------------------------------------

    def plot(self, owner: str, k: int) -> Plot:
        """Owner ``owner``'s plot of size ``k``, made now if it has none (k=18: about a
        second and 4 MiB)."""
        setup = self.owner(owner)
        setup.plots_path.mkdir(exist_ok=True)
        key = _verify_key_of(setup)
        found = find_plots(setup.plots_path, k)
        if found:
            return open_plot(found[0], key)
        return create_plot(setup.plots_path, key, k)

    def prove(
        self,
        owner: str,
        asset_name: str,
        data: bytes,
        resources: common_pb2.ResourceSpec,
        preset: Preset,
        previous: PreviousState | None = None,
        *,
        amount: int | None = None,
        on_step: Callable[[ProofKind, float], None] | None = None,
    ) -> common_pb2.FourProof:
        """The four proofs of the next version of owner ``owner``'s asset ``asset_name``
        (version 0 if ``previous`` is None, else ``previous.version + 1``), whose content is
        ``data`` and which offers ``resources``. The owner is both storage node and owner; it
        stakes ``amount`` (default: the preset's minimum). ``on_step``: as for
        :func:`~trustchain.consensus.proofs.bundle.prove_four_proofs`."""
        setup = self.owner(owner)
        chain = setup.chain()
        sign = self.signer(owner)
        return prove_four_proofs(
            asset=setup.asset_id(asset_name),
            previous=previous,
            chunks=custody.chunk(data),
            resources=resources,
            amount=preset.min_stake if amount is None else amount,
            preset=preset,
            plot=self.plot(owner, preset.plot_k),
            storage_chain=chain,
            storage_sign=sign,
            address=setup.address(),
            zone=self._zone,
            owner_chain=chain,
            owner_sign=sign,
            on_step=on_step,
        )

    # -- internals --------------------------------------------------------------------------

    def _manifest(self) -> bytes:
        def member(setup: MemberSetup) -> dict[str, object]:
            return {
                "name": setup.name,
                "dns_name": setup.dns_name,
                "key_id": setup.key_id.hex(),
                "port": setup.port,
            }

        document = {
            "format": FORMAT,
            "host": self._host,
            "zone": self._zone,
            "validators": [member(v) | {"stake": v.stake} for v in self._validators],
            "owners": [member(o) | {"balance": o.balance} for o in self._owners],
        }
        return json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"


# --- creation helpers ---------------------------------------------------------------------------


def _check_creation(
    directory: Path,
    validators: list[str],
    owners: list[str],
    host: str,
    stakes: list[int],
    balance: int,
) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FederationError(f"{directory} exists and is not an empty directory")
    if not 1 <= len(validators) <= _MAX_MEMBERS:
        raise FederationError(f"a federation has 1..{_MAX_MEMBERS} validators")
    if not 1 <= len(owners) <= _MAX_MEMBERS:
        raise FederationError(f"a federation has 1..{_MAX_MEMBERS} owners")
    if len(stakes) != len(validators) or any(type(s) is not int or s <= 0 for s in stakes):
        raise FederationError("stakes: one positive integer per validator")
    if type(balance) is not int or balance <= 0:
        raise FederationError("balance must be a positive integer")
    for name in owners:
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise FederationError(f"owner name {name!r} is not a DNS label (a-z 0-9 -)")
    if len(set(owners)) != len(owners) or set(owners) & set(validators):
        raise FederationError("member names must be distinct")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise FederationError(f"host {host!r} is not an IP address") from None


def _free_udp_ports(host: str, count: int) -> list[int]:
    """``count`` distinct UDP ports free on ``host`` now: each bound with port 0 (the kernel
    picks), all held until every one is picked, then released."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    except OSError as exc:
        raise FederationError(f"cannot bind UDP ports on {host}: {exc.strerror}") from exc
    finally:
        for sock in sockets:
            sock.close()


def _new_member(
    ca: CertificateAuthority,
    issuer: str,
    home: Path,
    dns_name: str,
    host: str,
    validity: timedelta,
) -> bytes:
    """Create ``home`` with a key store holding a fresh :data:`NODE_KEY`, have CA ``issuer``
    certify it as node ``dns_name`` (DNS name and ``host`` as IP address) and write the chain
    to ``home/chain.pem``; returns the key's id."""
    with KeyStore.open(home / "keys") as keys:
        keys.generate(NODE_KEY)
        key = _verify_key(keys, NODE_KEY)
    issued = ca.issue(
        issuer,
        "node",
        dns_name,
        subject_key=key,
        dns_names=[dns_name],
        ip_addresses=[host],
        validity=validity,
    )
    write_atomically(home / _CHAIN, issued.pem())
    return key.key_id


def _write_trust(
    directory: Path, ca: CertificateAuthority, log_key: VerifyKey, registry_key: VerifyKey
) -> None:
    trust = directory / _TRUST
    trust.mkdir()
    write_atomically(trust / _LOG_KEY_FILE, log_key.to_bytes())
    write_atomically(trust / _REGISTRY_KEY_FILE, registry_key.to_bytes())
    root = ca.certificate(ca.ca().serial)
    write_atomically(trust / "root.pem", root.public_bytes(Encoding.PEM))
    for name in (VALIDATOR_CA, NODE_CA):
        certificate = ca.certificate(ca.ca(name).serial)
        write_atomically(trust / f"{name}.pem", certificate.public_bytes(Encoding.PEM))
    _write_crls(directory, ca)


def _write_crls(directory: Path, ca: CertificateAuthority) -> None:
    trust = directory / _TRUST
    write_atomically(trust / "root.crl.pem", ca.crl().public_bytes(Encoding.PEM))
    for name in (VALIDATOR_CA, NODE_CA):
        write_atomically(trust / f"{name}.crl.pem", ca.crl(name).public_bytes(Encoding.PEM))


# --- reading helpers ----------------------------------------------------------------------------


def _member_from(
    entry: dict[str, object], parent: Path, host: str
) -> tuple[str, str, Path, bytes, str, int]:
    """The common fields of a member (name, DNS name, home, key id, host, port) from its
    manifest entry; ValueError or TypeError for anything malformed."""
    name = entry["name"]
    dns_name = entry["dns_name"]
    key_id = entry["key_id"]
    port = entry["port"]
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ValueError(f"member name {name!r} is not a DNS label")
    if not isinstance(dns_name, str) or not isinstance(key_id, str):
        raise TypeError(f"dns_name and key_id of {name} must be strings")
    identifier = bytes.fromhex(key_id)
    if len(identifier) != 32:
        raise ValueError(f"key id of {name} is not 32 bytes")
    if type(port) is not int or not 0 < port < 1 << 16:
        raise ValueError(f"port of {name} is not a port number")
    return name, dns_name, parent / name, identifier, host, port


def _positive(value: object, what: str) -> int:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _read_pem_certificates(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FederationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        certificates = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise FederationError(f"{path} does not hold PEM certificates: {exc}") from exc
    return certificates


def _read_pem_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FederationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise FederationError(f"{path} does not hold a PEM CRL: {exc}") from exc


def _read_key(path: Path) -> VerifyKey:
    try:
        return VerifyKey.from_bytes(path.read_bytes())
    except OSError as exc:
        raise FederationError(f"cannot read {path}: {exc.strerror}") from exc
    except (MalformedData, UnknownAlgorithm) as exc:
        raise FederationError(f"{path} is not a public key envelope: {exc}") from exc


def _verify_key(keys: KeyStore, name: str) -> VerifyKey:
    key = keys.public_key(name)
    if not isinstance(key, VerifyKey):
        raise FederationError(f"key {name} is not a signing key")
    return key


def _verify_key_of(member: MemberSetup) -> VerifyKey:
    """``member``'s public key, from the leaf of its chain, checked against its key id."""
    key = certificate_public_key(member.chain()[0])
    if key.key_id != member.key_id:
        raise FederationError(f"{member.chain_path} certifies another key than {member.name}'s")
    return key
