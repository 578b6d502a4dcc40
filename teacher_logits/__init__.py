"""The teacher-logit store: record codec, shards, manifest, reader, verification.

No model code lives here: a store is bytes and the rules for reading them.
"""
