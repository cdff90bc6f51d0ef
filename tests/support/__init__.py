"""Helpers the tests share: starting real processes on loopback and stopping them by group."""
