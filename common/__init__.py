"""Tools every part of avcache shares: typed YAML configs with overrides, reading untrusted
files, atomic writes, folder locks and label lists. They know nothing of the shard format."""
