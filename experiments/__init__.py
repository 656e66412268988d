"""Experiment entry points and configs for jaxsparse."""
