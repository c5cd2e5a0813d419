"""Issue 21: a disk that fills while `szoq merge` or `szoq export peft` writes its folder.

A real full disk needs a small filesystem (tmpfs, a loop device) that a test cannot mount, so
the real write path is run in a child process under a file-size limit (RLIMIT_FSIZE): a write
past it fails with EFBIG inside the same writers (transformers' save_pretrained, safetensors'
Rust writer) that ENOSPC reaches. The child ignores SIGXFSZ so the write fails instead of the
process being killed; ENOSPC itself is checked on the mapping directly.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from szoq_hub.core.files import disk_errors, full_disk_errno
from szoq_hub.core.errors import SzoqError

CHILD = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["szoq", *sys.argv[2:]]
    from szoq_cli.app import main
    main()
""")


def run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SZOQ_NO_PROGRESS": "1"}
    env.pop("SZOQ_DEBUG", None)
    return subprocess.run([sys.executable, "-c", CHILD, str(limit), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("command", ["merge", "export"])
def test_a_full_disk_while_writing_the_output_is_a_clean_error(command, run_dir, tiny_model_dir, tiny_mask, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = (["merge", "--delta", run_dir, "--out", out] if command == "merge" else
            ["export", "peft", "--delta", run_dir, "--out", out, "--model", tiny_model_dir, "--mask", tiny_mask])
    done = run_limited(args, 4096)  # smaller than the weights / adapter file
    assert done.returncode == 2, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "file-size limit" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert any(l.startswith("hint:") for l in done.stderr.splitlines())
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing partial


def test_enospc_from_python_and_from_safetensors_is_mapped():
    from safetensors import SafetensorError

    for exc in (OSError(errno.ENOSPC, "No space left on device", "x"), SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" }) os error 28")):
        assert full_disk_errno(exc) in (errno.ENOSPC, 28)
        with pytest.raises(SzoqError, match="no space left"):
            with disk_errors("out"):
                raise exc
    with pytest.raises(ValueError):  # anything else passes unchanged
        with disk_errors("out"):
            raise ValueError("not a disk problem")
