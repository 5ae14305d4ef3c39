"""Jitted pure training steps, one module per stage."""
