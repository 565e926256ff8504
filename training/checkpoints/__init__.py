"""Files of trained networks and runs: network pickles and weights files, the safe pickle reader, the published
checkpoints' conversion, the files a run writes beside its snapshots, atomic writers and latent files."""
