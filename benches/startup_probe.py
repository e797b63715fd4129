#!/usr/bin/env python3
"""Start-up probe for benches/startup.sh: starts `gatehouse serve` RUNS times on one config and
measures spawn -> first `/readyz` 200, then the process's RSS once ready, and stops it (SIGTERM,
then waits). Prints one line: `startup_median_s=… startup_max_s=… rss_mib=…`.

    startup_probe.py BIN CONFIG PORT [RUNS]
"""
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    binary, config, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    times, rss = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        p = subprocess.Popen([binary, "serve", "--config", config], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not ready(port):
            if p.poll() is not None:
                sys.stderr.write(p.stderr.read().decode(errors="replace"))
                sys.exit(f"gatehouse exited with {p.returncode} before /readyz")
            if time.monotonic() - t0 > 120:
                p.kill()
                sys.exit("no /readyz within 120 s")
            time.sleep(0.002)
        times.append(time.monotonic() - t0)
        rss.append(rss_mib(p.pid))
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print(f"startup_median_s={statistics.median(times):.3f} startup_max_s={max(times):.3f} "
          f"rss_mib={statistics.median(rss):.0f}")


if __name__ == "__main__":
    main()
