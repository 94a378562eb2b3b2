"""Training utilities shared by every trainer: device selection (more arrives with the shared-module issue)."""
