"""The registry's endpoints: model versions (read-only; training registers them)."""
