#!/usr/bin/python3
"""Deterministic, state-heavy python3 computation for checkpoint/restart equivalence.

    state.py [STEPS]   (default 100)

Every step mutates a simulation held in dicts, lists, sets, a deque, big integers, floats,
strings and a live generator (a suspended interpreter frame), then prints one line:
"step N <digest of the whole state> <chain>" where chain folds in every earlier line. The
same seed gives the same lines on every run, so a run checkpointed midway and restarted must
print exactly the lines an uninterrupted run prints. Prints "PASS" after the last step.
"""
import collections
import hashlib
import json
import random
import sys
import time


def op_stream(rng):
    """A generator whose own frame state (n, weights) matters across the checkpoint."""
    n = 0
    weights = [5, 3, 2, 1, 1]
    while True:
        n += 1
        kind = rng.choices(["move", "spawn", "kill", "merge", "text"], weights)[0]
        if n % 50 == 0:
            weights = weights[1:] + weights[:1]
        yield n, kind


def canonical(state):
    return json.dumps(
        {
            "entities": state["entities"],
            "tags": sorted(state["tags"]),
            "history": list(state["history"]),
            "big": str(state["big"]),
            "text": state["text"][-2000:],
            "textlen": len(state["text"]),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rng = random.Random(20240601)
    ops = op_stream(rng)
    state = {
        "entities": {},
        "tags": set(),
        "history": collections.deque(maxlen=300),
        "big": 1,
        "text": "",
    }
    for i in range(4000):
        state["entities"]["e%05d" % i] = {
            "pos": [rng.random() * 100, rng.random() * 100],
            "vel": [rng.uniform(-1, 1), rng.uniform(-1, 1)],
            "hp": rng.randint(1, 100),
            "inv": [rng.randint(0, 9) for _ in range(rng.randint(0, 6))],
        }
    next_id = 4000
    chain = hashlib.sha256(b"state.py").hexdigest()
    for step in range(1, steps + 1):
        ents = state["entities"]
        keys = sorted(ents)
        for _ in range(200):
            n, kind = next(ops)
            if kind == "move" and keys:
                e = ents[keys[rng.randrange(len(keys))]]
                e["pos"][0] = (e["pos"][0] + e["vel"][0] * 1.5) % 100.0
                e["pos"][1] = (e["pos"][1] + e["vel"][1] * 1.5) % 100.0
                e["vel"][0] = e["vel"][0] * 0.99 + rng.gauss(0, 0.1)
            elif kind == "spawn":
                k = "e%05d" % next_id
                next_id += 1
                ents[k] = {"pos": [rng.random() * 100, 0.0], "vel": [0.0, 1.0], "hp": 50, "inv": []}
                keys.append(k)
            elif kind == "kill" and len(keys) > 100:
                k = keys.pop(rng.randrange(len(keys)))
                state["tags"].add(k)
                del ents[k]
            elif kind == "merge" and len(keys) > 2:
                a, b = rng.sample(keys, 2)
                ents[a]["inv"] = sorted(ents[a]["inv"] + ents[b]["inv"])[-12:]
                ents[a]["hp"] = (ents[a]["hp"] * 31 + ents[b]["hp"]) % 1009
                state["big"] = state["big"] * (ents[a]["hp"] + 2) % (1 << 4000) + n
            elif kind == "text":
                state["text"] += "%x;" % (n * 2654435761 % 1000003)
            state["history"].append((n, kind))
        digest = hashlib.sha256(canonical(state).encode()).hexdigest()[:16]
        chain = hashlib.sha256((chain + digest).encode()).hexdigest()[:16]
        print("step %d %s %s" % (step, digest, chain), flush=True)
        time.sleep(0.02)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
