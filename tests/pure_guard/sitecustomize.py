"""First on the PYTHONPATH of the subprocesses of a ``-m pure`` test run: there, importing llama.cpp
is an error, so a test marked pure that starts llama.cpp in a subprocess fails instead of passing."""

import sys


class _NoLlama:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "llama_cpp":
            raise ImportError("a subprocess of a test marked pure imported llama_cpp: mark the test llama")
        return None


sys.meta_path.insert(0, _NoLlama())
