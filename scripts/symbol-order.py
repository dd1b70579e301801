#!/usr/bin/env python3
"""Prints the functions of OBJECT that callgrind saw run, hottest first, one
mangled name a line: the linker's --symbol-ordering-file (scripts/symbol-order.sh).
Usage: symbol-order.py OBJECT CALLGRIND_OUT...   (callgrind run with --demangle=no)
"""
import collections
import re
import sys


def main():
    obj, paths = sys.argv[1], sys.argv[2:]
    cost = collections.Counter()
    for path in paths:
        objects, functions = {}, {}
        current_object, current, inside, after_calls = None, None, False, False
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line)
                if m:
                    kind, i, name = m.groups()
                    if name:
                        objects[i] = name
                    if kind == "ob":
                        current_object = objects.get(i)
                    continue
                m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
                if m:
                    kind, i, name = m.groups()
                    if name:
                        functions[i] = name
                    if kind == "fn":
                        current = functions[i]
                        inside = bool(current_object and current_object.endswith("/" + obj))
                        if inside:
                            cost[current] += 0
                    continue
                if line.startswith("calls="):
                    after_calls = True
                    continue
                if inside and line[:1].isdigit():
                    fields = line.split()
                    # The line after calls= is the call's inclusive cost: not this function's own.
                    if not after_calls and len(fields) >= 2:
                        cost[current] += int(fields[1])
                    after_calls = False
    for name, _ in sorted(cost.items(), key=lambda kv: (-kv[1], kv[0])):
        # Callgrind adds "'2" for recursion levels; the symbol is the same.
        print(name.split("'")[0])


if __name__ == "__main__":
    main()
