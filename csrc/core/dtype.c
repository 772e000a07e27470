/* The 22 dtypes of the format; the enum value is the writer's sort rank. */
#include <string.h>

#include "internal.h"

static const struct {
  const char *name;
  unsigned char len;
  unsigned char bits;
} dtype_table[ST_DTYPE_COUNT] = {
    {"BOOL", 4, 8},        {"F4", 2, 4},          {"F6_E2M3", 7, 6},
    {"F6_E3M2", 7, 6},     {"U8", 2, 8},          {"I8", 2, 8},
    {"F8_E5M2", 7, 8},     {"F8_E4M3", 7, 8},     {"F8_E8M0", 7, 8},
    {"F8_E4M3FNUZ", 11, 8}, {"F8_E5M2FNUZ", 11, 8}, {"I16", 3, 16},
    {"U16", 3, 16},        {"F16", 3, 16},        {"BF16", 4, 16},
    {"I32", 3, 32},        {"U32", 3, 32},        {"F32", 3, 32},
    {"C64", 3, 64},        {"F64", 3, 64},        {"I64", 3, 64},
    {"U64", 3, 64},
};

const char *st_dtype_name(st_dtype dtype) {
  if ((unsigned)dtype >= ST_DTYPE_COUNT) return NULL;
  return dtype_table[dtype].name;
}

unsigned st_dtype_bits(st_dtype dtype) {
  if ((unsigned)dtype >= ST_DTYPE_COUNT) return 0;
  return dtype_table[dtype].bits;
}

unsigned st__dtype_bits(st_dtype dtype) { return dtype_table[dtype].bits; }

st_status st_dtype_from_name(const char *name, size_t len, st_dtype *out) {
  if (name == NULL || out == NULL) return ST_ERR_NOT_FOUND;
  for (unsigned i = 0; i < ST_DTYPE_COUNT; i++) {
    if (dtype_table[i].len == len && memcmp(dtype_table[i].name, name, len) == 0) {
      *out = (st_dtype)i;
      return ST_OK;
    }
  }
  return ST_ERR_NOT_FOUND;
}
