"""Import boundaries: a deployed client or server loads what it runs and nothing else.

Each flow runs in a fresh interpreter, so that what this test process already imported (torch,
brevitas, scikit-learn for training the fixture) cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fheqnn import FheModelClient
from helpers import tiny_classifier

#: Modules a client or server process must never load.
FORBIDDEN = ("brevitas", "onnx", "onnxruntime", "sklearn", "matplotlib", "tqdm", "skorch")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    root = tmp_path_factory.mktemp("boundaries")
    clf = tiny_classifier(x, y, max_epochs=10)
    clf.compile(x, rounding="off", p_error=None)  # bit-exact runs, compared across processes
    model, keys = root / "model", root / "keys"
    clf.fhe_model_.save(model)
    FheModelClient(model).keygen(keys)
    np.save(root / "rows.npy", x[:2])
    return {"model": model, "keys": keys, "root": root}


def _loaded_modules(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return the forbidden modules it loaded.

    concrete-python imports torch, and torch imports tqdm (``torch.hub``): what Concrete loads
    by itself is measured first in the same interpreter and not held against our code.
    """
    baseline = textwrap.dedent(
        """
        import sys
        from concrete import fhe  # noqa: F401
        concrete_loads = {name.split(".")[0] for name in sys.modules}
        """
    )
    probe = (
        baseline
        + textwrap.dedent(code)
        + textwrap.dedent(
            f"""
            import json
            ours = {{name.split(".")[0] for name in sys.modules}} - concrete_loads
            print(json.dumps({{"forbidden": sorted(ours & set({FORBIDDEN!r})), "ok": True}}))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_client_flow_loads_no_training_or_onnx_code(deployed) -> None:
    report = _loaded_modules(
        f"""
        import numpy as np
        from fheqnn.runtime import FheModelClient
        client = FheModelClient({str(deployed["model"])!r}, {str(deployed["keys"])!r})
        blob = client.encrypt(np.load({str(deployed["root"] / "rows.npy")!r}))
        assert len(blob) > 0
        client.evaluation_keys()
        """
    )
    assert report["ok"] and report["forbidden"] == []


def test_server_flow_loads_no_training_or_onnx_code(deployed) -> None:
    client = FheModelClient(deployed["model"], deployed["keys"])
    root = deployed["root"]
    (root / "in.bin").write_bytes(client.encrypt(np.load(root / "rows.npy")))
    (root / "ek.bin").write_bytes(client.evaluation_keys())
    report = _loaded_modules(
        f"""
        from pathlib import Path
        from fheqnn.runtime import FheModelServer
        server = FheModelServer({str(deployed["model"])!r})
        out = server.run(
            Path({str(root / "in.bin")!r}).read_bytes(), Path({str(root / "ek.bin")!r}).read_bytes()
        )
        Path({str(root / "out.bin")!r}).write_bytes(out)
        """
    )
    assert report["ok"] and report["forbidden"] == []
    # And what the fresh server computed decrypts to the local result.
    decrypted = client.decrypt((root / "out.bin").read_bytes())
    np.testing.assert_array_equal(
        decrypted, client.decrypt(_local_run(deployed["model"], client, root))
    )


def _local_run(model: Path, client: FheModelClient, root: Path) -> bytes:
    from fheqnn import FheModelServer

    return FheModelServer(model).run((root / "in.bin").read_bytes(), client.evaluation_keys())


def test_top_level_package_is_lazy() -> None:
    probe = textwrap.dedent(
        f"""
        import sys
        import fheqnn
        assert fheqnn.__version__ and "FheModelClient" in dir(fheqnn)
        loaded = {{name.split(".")[0] for name in sys.modules}}
        heavy = sorted(loaded & set({(*FORBIDDEN, "torch", "concrete")!r}))
        assert not heavy, f"import fheqnn loaded {{heavy}}"
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    import fheqnn

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        fheqnn.NoSuchThing  # noqa: B018
