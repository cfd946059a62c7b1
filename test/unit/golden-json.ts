// JSON form of wire values used by proto/golden/vectors.json: bin as
// {"$bin": hex}, integers beyond 2^53 as {"$u64": decimal}, nil as null.
export function toJson(v: unknown): unknown {
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
  if (typeof v === 'bigint') return { $u64: v.toString() };
  if (Array.isArray(v)) return v.map(toJson);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJson(x)]));
  return v;
}

export function fromJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.$bin === 'string') return Buffer.from(o.$bin, 'hex');
    if (typeof o.$u64 === 'string') return BigInt(o.$u64);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, fromJson(x)]));
  }
  return v;
}
