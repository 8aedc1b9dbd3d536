"""Local teacher benchmark: start-up time, tokens/s, and a grammar-constrained JSON list.

    python bench/local_teacher.py            # 3 start-ups, 5 answers of ~30 tokens, 3 JSON lists

Prints figures only (the machine is shared, so they vary with load; `uptime` is printed with them).
One request at a time, as the pool sends them to a local teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.request
from typing import Any

from promptbake.teacher.local import LocalServer, local_server

COMPLAINTS = [{"role": "user", "content": "List 5 different complaints an angry customer might send to an "
                                          "online shop's support chat. Answer as a JSON list of strings."}]
LIST_SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 5, "maxItems": 5}


def post(server: LocalServer, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    request = urllib.request.Request(server.base_url + "/chat/completions",
                                     data=json.dumps({"model": server.model, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    return answer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--answers", type=int, default=5)
    parser.add_argument("--lists", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")

    startups = []
    for _ in range(args.starts):
        start = time.perf_counter()
        with local_server():
            startups.append(time.perf_counter() - start)
    print(f"start-up until /v1/models answers: median {statistics.median(startups):.2f} s "
          f"(min {min(startups):.2f}, max {max(startups):.2f})")

    with local_server() as server:
        post(server, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})  # warm-up
        tokens, seconds = 0, 0.0
        for i in range(args.answers):
            answer, elapsed = post(server, {"max_tokens": 30, "temperature": 0.7, "seed": i, "messages": [
                {"role": "user", "content": "In one sentence, why do customers get angry at support agents?"}]})
            tokens += answer["usage"]["completion_tokens"]
            seconds += elapsed
        print(f"~30-token answers: {tokens / args.answers:.1f} tokens in {seconds / args.answers:.2f} s each, "
              f"{tokens / seconds:.1f} completion tokens/s (wall, incl. prompt)")

        valid = 0
        for seed in range(args.lists):
            answer, elapsed = post(server, {"messages": COMPLAINTS, "max_tokens": 400, "temperature": 0.8,
                                            "seed": seed,
                                            "response_format": {"type": "json_object", "schema": LIST_SCHEMA}})
            content = answer["choices"][0]["message"]["content"]
            try:
                items = json.loads(content)
                ok = isinstance(items, list) and len(items) == 5 and all(isinstance(i, str) for i in items)
            except ValueError:
                ok = False
            valid += ok
            print(f"json_object+schema list, seed {seed}: {elapsed:.2f} s, "
                  f"{answer['usage']['completion_tokens']} tokens, valid 5-item list: {ok}: {content[:100]!r}")
        print(f"valid lists: {valid}/{args.lists}")


if __name__ == "__main__":
    main()
