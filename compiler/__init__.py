"""Galaxy compiler: model -> plan -> per-device bundles."""
