"""A zenoh peer that finds its peers through exo-discovery instead of zenoh's own scouting."""
