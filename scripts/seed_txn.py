#!/usr/bin/env python3
"""The seed article's per-event profile update, in Python, for `make bench`.

Our copy of the peers' seed_txn.py (../shared/peers), so that the ratio of
nudge's ingest to the seed's approach is measured on the same machine in
the same run. Per event: WATCH user:{id}:profile; HGETALL; compute the new
profile (+1 view for the event's category, last_ts = now; a missing
profile starts as the peers' 20-field one); MULTI; HSET every field; EXEC;
retry on WatchError. Three round trips per event, as in the seed.

--events events are split over --procs processes (one connection each),
bounded by --maxsec. Users are drawn uniformly from 0..--users-1. Prints
one JSON line: events, seconds, events_per_sec, retries, procs, and the
per-event latency p50/p99 in microseconds.

Needs redis-py (the Debian package python3-redis); scripts/bench.sh
installs it when missing.
"""
import argparse
import json
import multiprocessing as mp
import random
import sys
import time

import redis

CATEGORIES = 16


def initial_profile(uid):
    """The peers' 20-field profile: 16 view counters, 2 times, tz, consent."""
    p = {"v:%d" % c: (uid + c) % 3 for c in range(CATEGORIES)}
    p.update(first_ts=1700000000000, last_ts=1700000000000,
             tz="Asia/Shanghai", consent="sms,push")
    return p


def calculate_new_profile(old, uid, cat, ts):
    new = dict(old) if old else initial_profile(uid)
    f = "v:%d" % cat
    new[f] = int(new.get(f, 0)) + 1
    new["last_ts"] = ts
    return new


def update_user_profile(r, uid, cat):
    """One event, the seed's way; returns the WatchError retries."""
    key = "user:%d:profile" % uid
    retries = 0
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                old = pipe.hgetall(key)
                new = calculate_new_profile(old, uid, cat, int(time.time() * 1000))
                pipe.multi()
                pipe.hset(key, mapping=new)
                pipe.execute()
                return retries
            except redis.WatchError:
                retries += 1


def worker(args, n, seed, start, out):
    r = redis.Redis(host=args.host, port=args.port, decode_responses=True)
    r.ping()
    rnd = random.Random(seed)
    lats = []
    retries = 0
    start.wait()
    deadline = time.monotonic() + args.maxsec
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        uid = rnd.randrange(args.users)
        cat = rnd.randrange(CATEGORIES)
        t = time.perf_counter()
        retries += update_user_profile(r, uid, cat)
        lats.append(time.perf_counter() - t)
    out.put((len(lats), retries, lats))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-addr", default="127.0.0.1:6379", help="host:port of Redis")
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--events", type=int, default=50000, help="upper bound of events, over all processes")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--maxsec", type=float, default=10, help="time bound of the load loop")
    args = ap.parse_args()
    args.host, _, port = args.redis_addr.rpartition(":")
    args.port = int(port)
    if args.procs < 1 or args.events < 1 or args.users < 1 or args.maxsec <= 0:
        sys.exit("seed_txn.py: --procs, --events, --users and --maxsec must be positive")

    start = mp.Barrier(args.procs + 1)
    out = mp.Queue()
    per = args.events // args.procs
    ps = [mp.Process(target=worker, args=(args, per, 1000 + i, start, out))
          for i in range(args.procs)]
    for p in ps:
        p.start()
    start.wait()
    t0 = time.perf_counter()
    res = [out.get() for _ in ps]
    el = time.perf_counter() - t0
    for p in ps:
        p.join()
    done = sum(x[0] for x in res)
    lats = sorted(v for x in res for v in x[2])

    def pct(q):
        return round(lats[int((len(lats) - 1) * q)] * 1e6, 1) if lats else 0

    print(json.dumps({
        "workload": "seed-python", "procs": args.procs, "users": args.users,
        "events": done, "seconds": round(el, 3),
        "events_per_sec": round(done / el, 1) if el > 0 else 0,
        "retries": sum(x[1] for x in res), "p50_us": pct(0.5), "p99_us": pct(0.99),
    }))


if __name__ == "__main__":
    main()
