"""Client keys for the LLM routes: the data-plane gate, the counts it shares, the admin API.

``KeyGate`` (``gate.py``) is what the LLM route handlers call; ``KeySync`` (``sync.py``) shares
its counts through the store; ``service.py`` and ``api.py`` are the control plane's side.
"""

from gateway.clientkeys.gate import Admission, KeyGate
from gateway.clientkeys.sync import KeySync

__all__ = ["Admission", "KeyGate", "KeySync"]
