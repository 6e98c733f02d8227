"""Tools every part of avcache shares: typed YAML configs with overrides, reading untrusted
files, atomic writes, folder locks, label lists and the command lines' number types; and,
for the GPU checks alone (the one module here that imports torch), a count of the host's
waits for the GPU. They know nothing of the shard format."""
