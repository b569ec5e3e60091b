"""`python -m wherevit.app.cli ...` whose last atexit handler releases the gloo workers that
libgloo_race.so holds and keeps the GIL for 20 ms (see gloo_race.cpp). RACE_SHIM names the library."""

import atexit
import ctypes
import os
import runpy
import sys

shim = ctypes.PyDLL(os.environ["RACE_SHIM"])  # PyDLL: the GIL stays held during the call
atexit.register(shim.wv_release_and_hold_gil, ctypes.c_long(20000))  # registered first, so it runs last
sys.argv[0] = "wherevit"
runpy.run_module("wherevit.app.cli", run_name="__main__", alter_sys=True)
