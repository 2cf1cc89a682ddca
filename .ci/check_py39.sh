#!/usr/bin/env bash
# Everything that runs inside 3D Slicer must run on Slicer 5.6/5.8's Python 3.9: the module file and
# the whole MultimodalRegistrationLib package (the child process runs it with PythonSlicer) and the
# Slicer-side helpers MultimodalRegistrationSlicerLib.
# Fails the build on a construct newer than 3.9.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=(MultimodalRegistration/MultimodalRegistration.py MultimodalRegistration/MultimodalRegistrationLib
       MultimodalRegistration/MultimodalRegistrationSlicerLib)

command -v vermin >/dev/null 2>&1 || python3 -m pip install --quiet "vermin==1.9.2"
# 1. vermin: language features, stdlib modules/functions/arguments newer than 3.9.
vermin -t=3.9- --no-tips --violations --eval-annotations "${FILES[@]}"

# 2. `X | Y` in annotations that Python evaluates. vermin's union-types detection also flags
#    annotations under `from __future__ import annotations` (never evaluated), so check here: in a
#    file without that import, an annotation with `|` raises TypeError on 3.9 when it is evaluated.
python3 - "${FILES[@]}" <<'EOF'
import ast, sys
from pathlib import Path

paths = []
for arg in sys.argv[1:]:
    p = Path(arg)
    paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
bad = []
for path in paths:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
           for n in tree.body):
        continue
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in args.posonlyargs + args.args + args.kwonlyargs
                            + [x for x in (args.vararg, args.kwarg) if x] if a.annotation]
            annotations += [node.returns] if node.returns else []
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    for annotation in annotations:
        if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)):
            bad.append(f"{path}:{annotation.lineno}: `X | Y` annotation without "
                       "`from __future__ import annotations` (needs Python 3.10)")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"no evaluated `X | Y` annotations in {len(paths)} files")
EOF

# 3. Where a Python 3.9 interpreter is installed, byte-compile with it too.
if python3.9 -c "" >/dev/null 2>&1; then
  python3.9 - "${FILES[@]}" <<'EOF'
import sys
from pathlib import Path

paths = [q for a in sys.argv[1:] for q in (sorted(Path(a).rglob("*.py")) if Path(a).is_dir() else [Path(a)])]
for path in paths:
    compile(path.read_text(encoding="utf-8"), str(path), "exec")
print(f"{len(paths)} files compile with Python {sys.version.split()[0]}")
EOF
fi
