"""HyperMesh consensus: the four proofs every asset state carries (:mod:`.proofs`)."""
