"""Segmentation: PQL segment definitions evaluated over unified profiles into memberships."""
