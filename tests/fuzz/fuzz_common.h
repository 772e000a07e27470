/* Internal to the fuzz targets: not part of the library.
 * Helpers shared by every target: a deterministic generator seeded from the
 * input, an independent reference slicer (the oracle for the library's
 * slices), and a check macro that crashes the harness, never the library. */
#ifndef ST_FUZZ_COMMON_H
#define ST_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

/* A broken invariant is a finding: abort so libFuzzer saves the input. */
#define FZ_CHECK(cond)                                                       \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__,  \
              #cond);                                                        \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* Every status the library may return, pinned range. */
#define FZ_KNOWN_STATUS(s) ((int)(s) >= 0 && (int)(s) <= (int)ST_ERR_FILE_CHANGED)

typedef struct fz_rng {
  uint64_t s;
} fz_rng;

static inline uint64_t fz_next(fz_rng *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline uint64_t fz_below(fz_rng *r, uint64_t n) {
  return n == 0 ? 0 : fz_next(r) % n;
}

static inline uint64_t fz_hash(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* Python's clamp of a slice bound into [0, dim]. */
static inline uint64_t fz_clamp(int64_t v, uint64_t dim) {
  if (v < 0) {
    uint64_t neg = (uint64_t)0 - (uint64_t)v;
    return neg >= dim ? 0 : dim - neg;
  }
  return (uint64_t)v > dim ? dim : (uint64_t)v;
}

/* A random slice bound: small values, negatives, the extremes. */
static inline int64_t fz_bound(fz_rng *r, uint64_t dim) {
  int64_t d = dim > (uint64_t)INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)dim;
  switch (fz_below(r, 8)) {
    case 0: return 0;
    case 1: return ST_SLICE_END;
    case 2: return INT64_MIN;
    case 3: return -(int64_t)fz_below(r, (uint64_t)d + 2);
    case 4: return d + (int64_t)fz_below(r, 3);
    default: return (int64_t)fz_below(r, (uint64_t)d + 1);
  }
}

/* The slice's per-dimension start/step/count, computed independently. */
typedef struct fz_dim {
  uint64_t start, step, count;
} fz_dim;

static inline void fz_resolve(const st_tensor_info *t, const st_range *rg,
                              size_t nr, fz_dim *out) {
  for (uint32_t d = 0; d < t->rank; d++) {
    if (d >= nr) {
      out[d].start = 0;
      out[d].step = 1;
      out[d].count = t->shape[d];
      continue;
    }
    uint64_t a = fz_clamp(rg[d].start, t->shape[d]);
    uint64_t b = fz_clamp(rg[d].stop, t->shape[d]);
    out[d].start = a;
    out[d].step = (uint64_t)rg[d].step;
    out[d].count = b > a ? (b - a - 1) / out[d].step + 1 : 0;
  }
}

/* Reference gather of a byte-aligned dtype, element by element, from the
 * tensor's bytes src into dst. Returns the number of bytes written. */
static inline uint64_t fz_ref_slice(const st_tensor_info *t, const fz_dim *dims,
                                    const uint8_t *src, uint8_t *dst) {
  uint64_t eb = st_dtype_bits(t->dtype) / 8, total = 1;
  for (uint32_t d = 0; d < t->rank; d++) total *= dims[d].count;
  if (total == 0) return 0;
  uint64_t idx[64] = {0};
  uint64_t out = 0;
  for (uint64_t k = 0; k < total; k++) {
    uint64_t lin = 0;
    for (uint32_t d = 0; d < t->rank; d++)
      lin = lin * t->shape[d] + dims[d].start + idx[d] * dims[d].step;
    memcpy(dst + out, src + lin * eb, (size_t)eb);
    out += eb;
    for (uint32_t d = t->rank; d-- > 0;) {
      if (++idx[d] < dims[d].count) break;
      idx[d] = 0;
    }
  }
  return out;
}

/* An independent UTF-8 validator (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF): the oracle for what the writer must refuse. */
static inline bool fz_utf8_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3Fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    if (cp > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

#endif /* ST_FUZZ_COMMON_H */
