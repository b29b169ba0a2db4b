"""The built-in filter kinds; importing this package registers them."""
from . import compression  # noqa: F401
from . import static  # noqa: F401

from . import basic_auth  # noqa: F401
from . import cors  # noqa: F401
from . import headers  # noqa: F401
from . import ip_acl  # noqa: F401
from . import mock  # noqa: F401
from . import ratelimit  # noqa: F401
from . import redirect  # noqa: F401
from . import request_id  # noqa: F401
