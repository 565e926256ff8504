"""Body models: SMPL-format arrays, the project's skinning, and the posable upper body."""
