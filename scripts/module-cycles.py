#!/usr/bin/env python3
"""No import cycles between the top-level modules of src/ (a folder is one
module; main.rs and lib.rs are the roots). Exits 1 and names the cycle."""
import glob, re, sys, os

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
deps = {}
for f in glob.glob("src/**/*.rs", recursive=True):
    top = f[len("src/"):-len(".rs")].split("/")[0]
    if top in ("main", "lib"):
        continue
    used = set(re.findall(r"crate::([a-z_]+)", open(f).read())) - {top}
    deps.setdefault(top, set()).update(used)

def reaches(a, b):
    seen, todo = set(), [a]
    while todo:
        for y in deps.get(todo.pop(), ()):
            if y == b:
                return True
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return False

cycles = sorted({tuple(sorted((a, b))) for a in deps for b in deps[a] if reaches(b, a)})
if cycles:
    print("module cycles in src/: " + ", ".join(f"{a} <-> {b}" for a, b in cycles))
    sys.exit(1)
print(f"src/: {len(deps)} modules, no import cycles")
