/* The 22 dtypes of the format: the one table of their facts (name, bits, the
 * reference writer's rank, the torch dtype each loads as) and the view policy
 * every binding follows. */
#include <stdint.h>
#include <string.h>

#include "common/checked.h"
#include "file.h"
#include "internal.h"

/* rank: the reference writer sorts tensors by it, descending. It equals the
 * enum number today, but the enum is pinned and the rank is the reference's,
 * so they are kept apart: a new dtype gets the next enum number and whatever
 * rank the reference gives it. values: file values per torch element (2 for
 * F4's packed pairs, 0 for the raw-byte F6 dtypes). */
static const struct {
  const char *name;
  const char *torch; /* torch's Python name */
  const char *c10;   /* c10::toString(ScalarType) */
  unsigned char bits;
  unsigned char rank;
  unsigned char values;
} dtype_table[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", "bool", "Bool", 8, 0, 1},
    [ST_F4] = {"F4", "float4_e2m1fn_x2", "Float4_e2m1fn_x2", 4, 1, 2},
    [ST_F6_E2M3] = {"F6_E2M3", "uint8", "Byte", 6, 2, 0},
    [ST_F6_E3M2] = {"F6_E3M2", "uint8", "Byte", 6, 3, 0},
    [ST_U8] = {"U8", "uint8", "Byte", 8, 4, 1},
    [ST_I8] = {"I8", "int8", "Char", 8, 5, 1},
    [ST_F8_E5M2] = {"F8_E5M2", "float8_e5m2", "Float8_e5m2", 8, 6, 1},
    [ST_F8_E4M3] = {"F8_E4M3", "float8_e4m3fn", "Float8_e4m3fn", 8, 7, 1},
    [ST_F8_E8M0] = {"F8_E8M0", "float8_e8m0fnu", "Float8_e8m0fnu", 8, 8, 1},
    [ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", "float8_e4m3fnuz", "Float8_e4m3fnuz", 8, 9, 1},
    [ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", "float8_e5m2fnuz", "Float8_e5m2fnuz", 8, 10, 1},
    [ST_I16] = {"I16", "int16", "Short", 16, 11, 1},
    [ST_U16] = {"U16", "uint16", "UInt16", 16, 12, 1},
    [ST_F16] = {"F16", "float16", "Half", 16, 13, 1},
    [ST_BF16] = {"BF16", "bfloat16", "BFloat16", 16, 14, 1},
    [ST_I32] = {"I32", "int32", "Int", 32, 15, 1},
    [ST_U32] = {"U32", "uint32", "UInt32", 32, 16, 1},
    [ST_F32] = {"F32", "float32", "Float", 32, 17, 1},
    [ST_C64] = {"C64", "complex64", "ComplexFloat", 64, 18, 1},
    [ST_F64] = {"F64", "float64", "Double", 64, 19, 1},
    [ST_I64] = {"I64", "int64", "Long", 64, 20, 1},
    [ST_U64] = {"U64", "uint64", "UInt64", 64, 21, 1},
};

static int valid(st_dtype dtype) { return (unsigned)dtype < ST_DTYPE_COUNT; }

const char *st_dtype_name(st_dtype dtype) {
  return valid(dtype) ? dtype_table[dtype].name : NULL;
}

unsigned st_dtype_bits(st_dtype dtype) {
  return valid(dtype) ? dtype_table[dtype].bits : 0;
}

const char *st_dtype_torch_name(st_dtype dtype) {
  return valid(dtype) ? dtype_table[dtype].torch : NULL;
}

const char *st_dtype_c10_name(st_dtype dtype) {
  return valid(dtype) ? dtype_table[dtype].c10 : NULL;
}

unsigned st_dtype_torch_values(st_dtype dtype) {
  return valid(dtype) ? dtype_table[dtype].values : 0;
}

unsigned st__dtype_bits(st_dtype dtype) { return dtype_table[dtype].bits; }

unsigned st__dtype_rank(st_dtype dtype) { return dtype_table[dtype].rank; }

static int name_is(const char *s, const char *name, size_t len) {
  return strlen(s) == len && memcmp(s, name, len) == 0;
}

st_status st_dtype_from_name(const char *name, size_t len, st_dtype *out) {
  if (name == NULL || out == NULL) return ST_ERR_NOT_FOUND;
  for (unsigned i = 0; i < ST_DTYPE_COUNT; i++) {
    if (name_is(dtype_table[i].name, name, len)) {
      *out = (st_dtype)i;
      return ST_OK;
    }
  }
  return ST_ERR_NOT_FOUND;
}

st_status st_dtype_from_torch_name(const char *name, size_t len, st_dtype *out) {
  if (name == NULL || out == NULL) return ST_ERR_NOT_FOUND;
  if (len > 6 && memcmp(name, "torch.", 6) == 0) {
    name += 6;
    len -= 6;
  }
  for (unsigned i = 0; i < ST_DTYPE_COUNT; i++) {
    if (dtype_table[i].values == 0) continue; /* raw bytes: nothing saves as F6 */
    if (name_is(dtype_table[i].torch, name, len) || name_is(dtype_table[i].c10, name, len)) {
      *out = (st_dtype)i;
      return ST_OK;
    }
  }
  return ST_ERR_NOT_FOUND;
}

st_status st_torch_view_of(st_dtype dtype, const uint64_t *shape, uint32_t rank,
                           st_torch_view *out) {
  if (!valid(dtype) || out == NULL || (shape == NULL && rank > 0)) return ST_ERR_INVALID_ARGUMENT;
  const unsigned values = dtype_table[dtype].values;
  uint64_t numel = 1;
  for (uint32_t d = 0; d < rank; d++) {
    if (st__mul_overflow_u64(numel, shape[d], &numel)) return ST_ERR_INVALID_ARGUMENT;
  }
  uint64_t bits;
  if (st__mul_overflow_u64(numel, dtype_table[dtype].bits, &bits) || bits % 8 != 0)
    return ST_ERR_INVALID_ARGUMENT;
  memset(out, 0, sizeof *out);
  out->dtype = dtype;
  out->torch_name = dtype_table[dtype].torch;
  out->c10_name = dtype_table[dtype].c10;
  /* Torch elements are whole bytes: a pair of F4 values, a raw F6 byte, or
   * one element of bits / 8 bytes. */
  out->element_size = values == 1 ? dtype_table[dtype].bits / 8u : 1u;
  out->numel = bits / 8 / out->element_size;
  if (values == 0 || (values == 2 && (rank == 0 || shape[rank - 1] % 2 != 0))) {
    out->flags |= ST_VIEW_FLAT;
    out->rank = 1;
    out->last_dim = out->numel;
  } else {
    out->rank = rank;
    if (rank > 0) out->last_dim = shape[rank - 1] / values;
    if (values == 2) out->flags |= ST_VIEW_PACKED;
  }
  return ST_OK;
}

st_status st_tensor_torch_view(const st_file *file, size_t index, st_torch_view *out) {
  if (file == NULL || out == NULL || index >= file->ntensors) return ST_ERR_INVALID_ARGUMENT;
  const st__tensor *t = &file->tensors[index];
  st_status st = st_torch_view_of(t->dtype, t->shape, t->rank, out);
  if (st != ST_OK) return st; /* never for a tensor that passed open */
  /* Where the bytes lie: their address in the mapping or the caller's memory,
   * else (pread) their offset in the file. */
  uint64_t at = 8u + file->header_size + t->begin;
  if (file->base != NULL) at = (uint64_t)(uintptr_t)(file->base + at);
  if (out->element_size > 1 && at % out->element_size != 0) out->flags |= ST_VIEW_COPY;
  return ST_OK;
}
