"""The networks: StyleGAN2 blocks, the tri-grid generator with its decoder, superresolution heads and pose
branch, and the pose-aware dual discriminator with the input it sees."""
