"""The named choices of the loss's options, which the run configuration validates and the loss applies."""

REG_TYPES = ('l1', 'monotonic-detach', 'monotonic-fixed')  # the density regularizer (docs/method.md §7.3)
# What the G pose prior compares p_G with: `paired`, the coarse pose of the item that gave each
# sample's camera (published); `marginal`, the chunk's coarse poses matched to p_G by rank, per value.
POSE_PRIOR_MATCHES = ('paired', 'marginal')
