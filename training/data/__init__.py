"""Data: the image data sets and their labels, cameras, the synthetic painter, photos read from files and the
conversions between 8-bit pictures and the networks' value ranges."""
