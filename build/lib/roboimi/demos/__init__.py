"""Runnable demos: dataset recording and the VLA training / evaluation scripts."""
