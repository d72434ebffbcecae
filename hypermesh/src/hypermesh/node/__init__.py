"""The HyperMesh node's processes and clients.

* :mod:`hypermesh.node.validator` — one validator of the quorum-certified asset ledger
  (``python -m hypermesh.node.validator``), serving its ledger over STOQ and optionally the
  ``ConsensusLayer`` gRPC service;
* :mod:`hypermesh.node.ledger_client` — the owner's side: getting a change certified by the
  committee and applied.

Nothing is imported here, so that ``python -m hypermesh.node.validator`` runs the module once.
"""
