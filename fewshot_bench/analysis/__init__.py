"""Paired statistics over stored episodes."""
