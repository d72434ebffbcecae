"""The four proofs of an asset state, each a published construction anyone can verify.

* WHERE — :mod:`.space`: Chia proof of space over a plot bound to the storage node's key
  (:mod:`.plots`), plus a Merkle proof of custody of the asset's chunks (:mod:`.custody`), plus
  the storage location signed by that node.
* WHO — :mod:`.stake`: the owner's hybrid signature over the state and stake, the owner's
  certificate chain, and a signed stake registry balance.
* WHAT/HOW — :mod:`.work`: hashcash-style SHA-256 work bound to the asset, its resources and
  the beacon (:mod:`.hashcash` reads classic hashcash v1 stamps).
* WHEN — :mod:`.timing`: a Wesolowski VDF (chiavdf) over the previous state hash, plus a
  SHA-256 hash chain ordering events.

:mod:`.bundle` validates all four together and chains versions (each builds on the previous
state's combined hash); :mod:`.presets` holds every threshold; :mod:`.challenges` derives every
challenge from the chain of states; :mod:`.signers` decodes and validates who signed a proof;
:mod:`.local_network` is a one-machine proving setup (own CA, log, registry, plots) used by the
``trustchain proofs`` commands, the demo, tests and benchmarks.
"""
