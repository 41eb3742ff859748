"""The REST API (`/api/v1/`): thin DRF views over the labeling and training services and selectors."""
