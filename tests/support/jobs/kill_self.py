"""Die by SIGKILL, as the OOM killer would do it."""

import os
import signal

os.kill(os.getpid(), signal.SIGKILL)
