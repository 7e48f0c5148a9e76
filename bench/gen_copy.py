# Emits PostgreSQL COPY text rows (path<TAB>content) from the text files of a source tree, for the benchmark's database.
"""Usage: gen_copy.py ROOT MAX_BYTES

Walks ROOT in sorted order and writes one COPY text-format row per file
that is valid UTF-8 without NUL bytes, until MAX_BYTES of file content
have been emitted. Prints a summary (files, bytes) to stderr.
"""
import os
import sys


def escape(s: str) -> str:
    # COPY text format: backslash, tab, newline and carriage return must be escaped.
    return (
        s.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def main() -> int:
    root = os.path.abspath(sys.argv[1])
    budget = int(float(sys.argv[2]))
    out = sys.stdout
    files = 0
    emitted = 0
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            with open(full, "rb") as f:
                raw = f.read()
            if not raw or b"\x00" in raw:
                skipped += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                skipped += 1
                continue
            rel = os.path.relpath(full, root)
            out.write(escape(rel))
            out.write("\t")
            out.write(escape(text))
            out.write("\n")
            files += 1
            emitted += len(raw)
            if emitted >= budget:
                print(f"files={files} bytes={emitted} skipped={skipped}", file=sys.stderr)
                return 0
    print(f"files={files} bytes={emitted} skipped={skipped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
