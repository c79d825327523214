"""Decode functions that misbehave, run inside IsolatedDecoder's child by dotted name."""

import os
import time


def hang(*args):
    time.sleep(3600)


def crash(*args):
    os.abort()


def echo(*args):
    return args
