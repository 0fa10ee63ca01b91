"""Benchmark: the bot's own overhead per job, end to end on the devnet, and its throughput at saturation.

    .venv/bin/python bench/e2e.py

A devnet (real PoCo on anvil, market, gateway, a 2-worker pool running the small test app, the Telegram
stand-in) and the bot as a subprocess, as in tests/test_e2e_*.py.
  latency      30 photos one after another (one user each): from the photo reaching Telegram to the
               segmented picture arriving back in the chat, minus the app's own run time in the pool;
               median and p95 (target: median under 2 s).
  saturation   60 photos at once (20 users x 3) with the app taking SLEEP_S a task: jobs delivered per minute
               against the pool's own limit (workers x 60 / SLEEP_S), i.e. how close the bot keeps the
               workers busy.
Ends with one RESULT line.
"""
from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures_bot import photo_bytes  # noqa: E402
from tests.fixtures_e2e import E2E, open_devnet  # noqa: E402

LATENCY_JOBS = 30
SAT_USERS, SAT_PHOTOS, SLEEP_S, WORKERS = 20, 3, 2.0, 2


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def latency(e2e: E2E) -> list[float]:
    """Photo in -> result out, minus the app's run time, for LATENCY_JOBS jobs one at a time."""
    out = []
    for i in range(LATENCY_JOBS):
        user = e2e.new_user()
        started = time.monotonic()
        e2e.tg.inject_photo(user, photo_bytes(seed=i))
        await e2e.tg.wait_for(lambda u=user: bool(e2e.results(u)), timeout=60)
        took = time.monotonic() - started
        [job] = e2e.jobs(user)
        app_s = e2e.net.pool.outcomes[job.task_id.lower()].app_seconds if job.task_id else 0.0
        out.append(took - app_s)
        print(f"  job {i + 1:2d}: {took:.2f} s end to end, app {app_s:.2f} s, bot {took - app_s:.2f} s")
    return out


async def saturation(e2e: E2E) -> tuple[float, float, int]:
    """(jobs per minute delivered, the pool's own limit per minute, jobs delivered)."""
    users = [e2e.new_user(2 * 10**9) for _ in range(SAT_USERS)]
    started = time.monotonic()
    for i, user in enumerate(users):
        for k in range(SAT_PHOTOS):
            e2e.tg.inject_photo(user, photo_bytes(seed=1000 + i * SAT_PHOTOS + k))
    total = SAT_USERS * SAT_PHOTOS
    await e2e.tg.wait_for(lambda: sum(len(e2e.results(u)) for u in users) >= total, timeout=600)
    elapsed = time.monotonic() - started
    return total / elapsed * 60, WORKERS * 60 / SLEEP_S, total


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        net = await open_devnet(Path(tmp) / "devnet", "test", workers=WORKERS)
        try:
            e2e = E2E(net, Path(tmp) / "books")
            e2e.write_env(MAX_JOBS_PER_HOUR="1000", MAX_DAILY_SPEND_NRLC=str(100 * 10**9))
            await e2e.start_bot()
            print(f"latency: {LATENCY_JOBS} photos one after another")
            lat = await latency(e2e)
            e2e.close()
            sat_env = E2E(net, Path(tmp) / "books-sat")
            sat_env.write_env(WORKER_ARGS=f"--sleep {SLEEP_S}", MAX_JOBS_PER_HOUR="1000")
            await sat_env.start_bot()
            print(f"saturation: {SAT_USERS * SAT_PHOTOS} photos at once, app {SLEEP_S} s a task, "
                  f"{WORKERS} workers")
            rate, limit, done = await saturation(sat_env)
            limited = net.telegram.rate_limited
            sat_env.close()
        finally:
            await net.stop()
    med, p95 = statistics.median(lat), _pct(lat, 0.95)
    print(f"bot overhead per job: median {med:.2f} s, p95 {p95:.2f} s (target median < 2 s)")
    print(f"saturation: {done} jobs, {rate:.1f} jobs/min vs the pool's own limit {limit:.0f} jobs/min "
          f"({rate / limit:.0%}); 429 answers: {limited}")
    print(f"RESULT overhead_median_s={med:.3f} overhead_p95_s={p95:.3f} jobs_per_min={rate:.1f} "
          f"pool_limit_per_min={limit:.0f} utilisation={rate / limit:.2f} rate_limited={limited}")


if __name__ == "__main__":
    asyncio.run(main())
