"""The worker stands on service_core and grpo_core only: importing every worker module loads no module of the HTTP
layer (api/: routes, schemas, deps, main, metrics, dashboard), and nothing of FastAPI. The API's side of the same
split is tests/api/test_no_torch.py."""

import json
import subprocess
import sys

WORKER_IMPORTS = r"""
import json, pkgutil, importlib, sys
import worker
for module in pkgutil.iter_modules(worker.__path__):
    importlib.import_module(f"worker.{module.name}")
loaded = sorted(name for name in sys.modules if name == "api" or name.startswith(("api.", "fastapi", "starlette")))
print(json.dumps({"worker_modules": [m.name for m in pkgutil.iter_modules(worker.__path__)], "http": loaded}))
"""


def test_worker_imports_no_http_module():
    done = subprocess.run([sys.executable, "-c", WORKER_IMPORTS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"app", "runner", "preflight", "reconciler", "writes"} <= set(seen["worker_modules"])
    assert seen["http"] == []
