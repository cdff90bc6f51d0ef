"""Deployment tooling: the Compose stack (`make up`), the local dev stack (`make dev`), images."""
