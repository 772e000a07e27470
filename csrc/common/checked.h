/* Internal to the safetensors library: not installed, not part of the ABI.
 * Checked arithmetic for every size and offset that came from a file (C and
 * C++: static inline over the compiler builtins). */
#ifndef ST_COMMON_CHECKED_H
#define ST_COMMON_CHECKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Each returns true when the result overflowed; *out is then unspecified. */
static inline bool st__add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_add_overflow(a, b, out);
}

static inline bool st__mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out) {
  return __builtin_mul_overflow(a, b, out);
}

static inline bool st__add_overflow_size(size_t a, size_t b, size_t *out) {
  return __builtin_add_overflow(a, b, out);
}

static inline bool st__mul_overflow_size(size_t a, size_t b, size_t *out) {
  return __builtin_mul_overflow(a, b, out);
}

/* A uint64_t that must fit a size_t (32-bit builds never truncate). */
static inline bool st__u64_to_size(uint64_t v, size_t *out) {
  if (v > (uint64_t)SIZE_MAX) return false;
  *out = (size_t)v;
  return true;
}

/* Rounds v up to a multiple of align (a power of two); true on overflow. */
static inline bool st__align_up_u64(uint64_t v, uint64_t align, uint64_t *out) {
  uint64_t t;
  if (st__add_overflow_u64(v, align - 1, &t)) return true;
  *out = t & ~(align - 1);
  return false;
}

#endif /* ST_COMMON_CHECKED_H */
