# Writes N bytes of deterministic, partly compressible, non-repeating data to stdout (the 10 GiB memory-bound stream).
"""Usage: gen_big.py SIZE [SEED]   (SIZE in bytes, or with a K/M/G/T suffix, binary units)

Each 1 MiB block is 512 KiB of pseudo-random bytes followed by 512 KiB of
pseudo-random letters from a 16-letter alphabet (4 bits of entropy per
byte), so the stream compresses to roughly 75 % of its size and no block
repeats. The same seed always gives the same bytes.
"""
import random
import sys

BLOCK = 1 << 20
HALF = BLOCK // 2
ALPHABET = b"etaoinshrdlucmfw"
TABLE = bytes(ALPHABET[i % 16] for i in range(256))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def main() -> int:
    total = parse_size(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 20240601
    rng = random.Random(seed)
    out = sys.stdout.buffer
    left = total
    while left > 0:
        block = rng.randbytes(HALF) + rng.randbytes(HALF).translate(TABLE)
        if left < BLOCK:
            block = block[:left]
        out.write(block)
        left -= len(block)
    out.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
