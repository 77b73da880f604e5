"""The decision trail: records, Merkle tree, checkpoints, store, query and verification."""
