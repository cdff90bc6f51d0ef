"""Deployment profiles (``*.env``) and the typed settings model that reads them."""
