"""tokenbroker: the current tokenbroker access token in one line.

>>> from tokenbroker import TokenSource
>>> with TokenSource("127.0.0.1:50051", org="acme", user_id="EMP-00001") as src:
...     headers = {"Authorization": f"Bearer {src.token()}"}

:class:`TokenSource` follows one key's WatchTokens stream; :class:`Connection` is a
channel several sources share; :class:`TokenError` is what they raise. The HTTP helpers
are ``tokenbroker.requests.BearerAuth`` and ``tokenbroker.httpx.BearerAuth``.
"""

from ._connection import Connection
from ._errors import TokenError
from ._source import TokenSource

__all__ = ["Connection", "TokenError", "TokenSource"]
__version__ = "0.1.0"
