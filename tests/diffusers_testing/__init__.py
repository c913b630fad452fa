"""diffusers' own model and pipeline test mixins, vendored as test utilities (Apache-2.0; see README.md)."""
