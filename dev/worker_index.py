"""Index the app as the real Python worker does before the host starts it: `azure-functions-runtime`'s
`load_binding_registry` and `index_function_app`, then `Registry.add_indexed_function` for every function
(where the worker checks parameter names against bindings and annotations against trigger types), then the
raw bindings it sends the host (`get_fx_raw_bindings`: SDK-type bindings marked `SupportsDeferredBinding`).
Prints `{"functions": {name: [binding, ...]}}`, or `{"error": ...}` and exits 1.

    python -m dev.worker_index [APP_DIR]   # with .worker/ (make setup installs it) on PYTHONPATH

The worker package is installed apart from the app's requirements (`requirements-worker.txt`, into
`.worker/`): in Azure the platform brings it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

# The host hands the worker its gRPC message module; indexing reads only these enum values of
# FunctionRpc.proto's BindingInfo (Direction: in = 0, out = 1, inout = 2; DataType: undefined = 0,
# string = 1, binary = 2, stream = 3).
PROTOS = SimpleNamespace(BindingInfo=SimpleNamespace(in_=0, out=1, inout=2, undefined=0, string=1, binary=2, stream=3))


def index(app_dir: Path) -> dict[str, list]:
    from azure_functions_runtime.bindings.meta import load_binding_registry
    from azure_functions_runtime.functions import Registry
    from azure_functions_runtime.loader import get_fx_raw_bindings, index_function_app

    load_binding_registry()  # as the worker does when the host initialises it
    sys.path.insert(0, str(app_dir))
    os.chdir(app_dir)
    registry = Registry()
    indexed = {}
    for function in index_function_app(str(app_dir / "function_app.py")):
        info = registry.add_indexed_function(function=function, protos=PROTOS)
        raw, _ = get_fx_raw_bindings(function, info)  # what the worker sends the host (SDK-type bindings marked)
        indexed[function.get_function_name()] = [json.loads(b) for b in raw]
    return indexed


def main() -> int:
    app_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
    try:
        print(json.dumps({"functions": index(app_dir)}, sort_keys=True))
    except Exception as exc:  # noqa: BLE001 - the worker would refuse to start the app: say why
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
