"""The engines behind the command-line tools: the viewer, inversion, videos, shapes, the mesh renderer and the
render statistics of a shipped model."""
