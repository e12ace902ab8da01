"""Demonstrations on disk (LeRobot v2 layout) and datasets built from them."""
