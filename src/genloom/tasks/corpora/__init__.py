"""`genloom corpora`: the named corpora and image sets on this machine."""
