"""A process that simulated or ran a circuit keeps the exit status it meant.

concrete-python 2.11 registers an exit handler that, once a circuit has been simulated or run,
ends the process with status 0 whatever it meant (a failed script, a failed test run).
fheqnn takes it out wherever it loads Concrete (``fheqnn.concrete_seam.keep_exit_status``).
Each case runs in a fresh interpreter, as a user's script, the ``fheqnn`` program or pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)

#: A one-lookup circuit compiled for simulation and for real encryption (milliseconds).
TOY_CIRCUIT = """
def toy(fhe):
    @fhe.compiler({"x": "encrypted"})
    def f(x):
        return fhe.univariate(lambda v: v % 4)(x)
    return f
"""


def run_python(code: str, *, toy: bool = False) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees this checkout's sources (after the definition
    of ``toy`` if asked)."""
    return subprocess.run(
        [sys.executable, "-c", (TOY_CIRCUIT if toy else "") + textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_concrete_alone_loses_the_status() -> None:
    # The fault this module guards against, shown on Concrete alone: if a release of Concrete
    # stops replacing the status, this fails, and keep_exit_status can go.
    done = run_python(
        """
        import sys
        from concrete import fhe
        toy(fhe).compile(range(8), fhe_simulation=True).simulate(3)
        sys.exit(3)
        """,
        toy=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.encrypted
@pytest.mark.parametrize("how", ["simulate", "encrypt_run_decrypt"])
def test_a_script_through_the_seam_keeps_its_status(how: str) -> None:
    done = run_python(
        f"""
        import sys
        from fheqnn.concrete_seam import fhe
        circuit = toy(fhe()).compile(range(8), fhe_simulation={how == "simulate"})
        if {how!r} == "encrypt_run_decrypt":
            circuit.keygen()
        assert getattr(circuit, {how!r})(3) == 3
        sys.exit(3)
        """,
        toy=True,
    )
    assert done.returncode == 3, done.stderr[-2000:]


@pytest.mark.slow
def test_a_user_who_imports_concrete_first_calls_keep_exit_status() -> None:
    # What the README tells a user whose script imports concrete directly.
    done = run_python(
        """
        import sys
        from concrete import fhe
        import fheqnn
        fheqnn.keep_exit_status()
        toy(fhe).compile(range(8), fhe_simulation=True).simulate(3)
        sys.exit(4)
        """,
        toy=True,
    )
    assert done.returncode == 4, done.stderr[-2000:]


@pytest.mark.encrypted
def test_an_encrypted_run_then_an_uncaught_error_exits_1(tiny_models) -> None:
    done = run_python(
        f"""
        import numpy as np
        from fheqnn import FheModelClient, FheModelServer
        client = FheModelClient({str(tiny_models.a)!r}, {str(tiny_models.keys_a)!r})
        server = FheModelServer({str(tiny_models.a)!r})
        rows = np.array({tiny_models.x[:2].tolist()!r})
        labels = client.decrypt(server.run(client.encrypt(rows), client.evaluation_keys()))
        print(list(labels))
        raise RuntimeError("the script failed after an encrypted run")
        """
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the script failed after an encrypted run" in done.stderr
    assert done.stdout.strip().startswith("[")  # the run itself worked


@pytest.mark.slow
def test_the_dataflow_runtime_gets_concrete_s_handler_back() -> None:
    # fheqnn never starts Concrete's dataflow runtime; if anything in the process does (through
    # concrete.compiler.init_dfr, as Concrete itself does), the handler that stops it at exit is
    # registered again, and the status is then Concrete's (0). Started behind that function's
    # back, the runtime would not be stopped, and the status stays ours: that is the difference.
    script = """
        import sys
        import fheqnn
        fheqnn.keep_exit_status()
        fheqnn.keep_exit_status()  # twice: no effect
        import concrete.compiler
        concrete.compiler.{start}()
        concrete.compiler.{start}()
        sys.exit(5)
        """
    through_concrete = run_python(script.format(start="init_dfr"))
    assert through_concrete.returncode == 0, through_concrete.stderr[-2000:]
    behind_its_back = run_python(script.format(start="_init_df_parallelization"))
    assert behind_its_back.returncode == 5, behind_its_back.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.encrypted
def test_the_fheqnn_program_keeps_its_status(tiny_models, tmp_path: Path) -> None:
    # A regression check of the program's own path: there, a command that runs Concrete runs in
    # a forked child that leaves with os._exit, and the parent never loads Concrete, so this
    # held before keep_exit_status too. The in-process cases below are the ones it fixed.
    fheqnn = shutil.which("fheqnn")
    assert fheqnn, "the fheqnn program is installed with the package"
    np.save(tmp_path / "wide.npy", np.zeros((2, 7)))
    np.save(tmp_path / "rows.npy", tiny_models.x[:2])
    env = {**os.environ, "PYTHONPATH": SRC}
    common = [str(tiny_models.a), "--keys", str(tiny_models.keys_a), "--quiet", "--input"]
    ok = subprocess.run(
        [fheqnn, "predict", *common, str(tmp_path / "rows.npy")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [fheqnn, "predict", *common, str(tmp_path / "wide.npy")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "has 7 features per row, expected 4" in bad.stderr


@pytest.mark.encrypted
@pytest.mark.slow
def test_main_called_from_a_script_after_an_encrypted_run_keeps_its_status(
    tiny_models, tmp_path: Path
) -> None:
    # In a Python process (not the program), commands run in-process: the encrypted run of the
    # first call loads Concrete's runtime here.
    np.save(tmp_path / "wide.npy", np.zeros((2, 7)))
    np.save(tmp_path / "rows.npy", tiny_models.x[:2])
    done = run_python(
        f"""
        import sys
        from fheqnn.cli import main
        common = [{str(tiny_models.a)!r}, "--keys", {str(tiny_models.keys_a)!r}, "--quiet"]
        assert main(["predict", *common, "--input", {str(tmp_path / "rows.npy")!r}]) == 0
        sys.exit(main(["predict", *common, "--input", {str(tmp_path / "wide.npy")!r}]))
        """
    )
    assert done.returncode == 2, done.stderr[-2000:]


FAILING_TEST_THROUGH_FHEQNN = """
import numpy as np
from fheqnn import FheModelClient, FheModelServer

def test_runs_then_fails():
    client = FheModelClient({model!r}, {keys!r})
    rows = np.array({rows!r})
    out = FheModelServer({model!r}).run(client.encrypt(rows), client.evaluation_keys())
    assert len(client.decrypt(out)) == 2
    assert False, "deliberate"
"""

FAILING_TEST_WITH_CONCRETE = (
    TOY_CIRCUIT
    + """
def test_simulates_then_fails():
    from concrete import fhe
    toy(fhe).compile(range(8), fhe_simulation=True).simulate(3)
    assert False, "deliberate"
"""
)


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(folder)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, TESTS])},
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.encrypted
def test_a_failing_test_after_an_encrypted_run_fails_pytest(tiny_models, tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        FAILING_TEST_THROUGH_FHEQNN.format(
            model=str(tiny_models.a), keys=str(tiny_models.keys_a), rows=tiny_models.x[:2].tolist()
        )
    )
    done = _pytest(tmp_path)
    assert "1 failed" in done.stdout, done.stdout[-2000:]
    assert done.returncode == 1, done.stdout[-2000:]


@pytest.mark.slow
def test_our_plugin_keeps_pytest_s_status_when_a_test_uses_concrete_directly(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_direct.py").write_text(textwrap.dedent(FAILING_TEST_WITH_CONCRETE))
    without = _pytest(tmp_path)
    assert "1 failed" in without.stdout and without.returncode == 0  # Concrete's fault, shown
    with_ours = _pytest(tmp_path, "-p", "keep_status")  # the plugin this suite's conftest loads
    assert "1 failed" in with_ours.stdout, with_ours.stdout[-2000:]
    assert with_ours.returncode == 1, with_ours.stdout[-2000:]
