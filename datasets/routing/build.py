"""Builds train.jsonl and dev.jsonl from the hand-written items in src/.

Deterministic: the same sources give byte-identical files. The split is stratified by path and
task class (about 75/25): within each stratum items are ordered by a hash of their id and every
fourth one goes to dev, with the phase carried across strata so that small strata balance out.

Run: python3 datasets/routing/build.py
"""

import hashlib
import json
import os
import sys

sys.dont_write_bytecode = True
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "src"))

import balanced  # noqa: E402
import fast  # noqa: E402
import reasoning  # noqa: E402

SOURCES = [("fast", fast.ITEMS), ("balanced", balanced.ITEMS), ("reasoning", reasoning.ITEMS)]


def messages(content):
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    return [{"role": role, "content": text} for role, text in content]


def items():
    out = []
    for path, source in SOURCES:
        counts = defaultdict(int)
        for entry in source:
            task_class, content = entry[0], entry[1]
            extra = entry[2] if len(entry) > 2 else {}
            counts[task_class] += 1
            item = {"id": f"{path}-{task_class}-{counts[task_class]:03d}", "messages": messages(content)}
            for key in ("tools", "response_format", "reasoning_effort"):
                if key in extra:
                    item[key] = extra[key]
            item["path"] = path
            item["task_class"] = task_class
            item["lang"] = extra.get("lang", "en")
            if "note" in extra:
                item["note"] = extra["note"]
            out.append(item)
    return out


def split(all_items):
    strata = defaultdict(list)
    for item in all_items:
        strata[(item["path"], item["task_class"])].append(item)
    train, dev = [], []
    phase = 0
    for key in sorted(strata):
        ordered = sorted(strata[key], key=lambda i: hashlib.sha256(i["id"].encode()).hexdigest())
        for item in ordered:
            (dev if phase % 4 == 3 else train).append(item)
            phase += 1
    order = {item["id"]: n for n, item in enumerate(all_items)}
    return sorted(train, key=lambda i: order[i["id"]]), sorted(dev, key=lambda i: order[i["id"]])


def check(all_items):
    texts = set()
    for item in all_items:
        text = json.dumps(item["messages"], ensure_ascii=False)
        if text in texts:
            raise SystemExit(f"duplicate prompt: {item['id']}")
        texts.add(text)


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


def main():
    all_items = items()
    check(all_items)
    train, dev = split(all_items)
    write("train.jsonl", train)
    write("dev.jsonl", dev)
    for name, rows in (("train", train), ("dev", dev)):
        per = defaultdict(int)
        for row in rows:
            per[row["path"]] += 1
        print(name, len(rows), dict(per))


if __name__ == "__main__":
    main()
