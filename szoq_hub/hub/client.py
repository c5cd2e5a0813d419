"""The Hugging Face Hub client as szoq uses it (identified as szoq), and the endpoint in use.

Its own module so that both the transport (`transport.py`) and the error mapping (`errors.py`,
which asks the Hub who a refused token is) reach the client without importing each other.
"""

from __future__ import annotations

from ..core.defaults import __version__


def api():
    """The Hub client, identified as szoq."""
    from huggingface_hub import HfApi

    return HfApi(library_name="szoq", library_version=__version__)


def endpoint() -> str:
    """The Hub endpoint in use (`HF_ENDPOINT`, read by huggingface_hub at import)."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")
