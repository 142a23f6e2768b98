"""Write its pid to PID_FILE, ignore SIGINT, then sleep until terminated."""

import os
import signal
import time
from pathlib import Path

signal.signal(signal.SIGINT, signal.SIG_IGN)
pid_file = Path(os.environ["PID_FILE"])
pid_file.write_text(str(os.getpid()))
while True:
    time.sleep(1)
