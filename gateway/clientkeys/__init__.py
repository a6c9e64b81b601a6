"""Client keys for the LLM routes: the data-plane gate and the counts it shares.

``KeyGate`` (``gate.py``) is what the LLM route handlers call; ``KeySync`` (``sync.py``) shares
its counts through the store; the admin API is ``gateway.control.keys_api``.
"""

from gateway.clientkeys.gate import Admission, KeyGate
from gateway.clientkeys.sync import KeySync

__all__ = ["Admission", "KeyGate", "KeySync"]
