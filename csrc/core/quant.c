/* Dequantization kernels (include/safetensors.h, "Dequantization"): pure
 * compute over caller memory. A row is decoded a tile at a time into floats,
 * scaled, and converted, so each loop is a short fixed-shape one that the
 * compiler vectorizes; nothing of full size is ever held. */
#include <string.h>

#include "common/checked.h"
#include "internal.h"

#define TILE 64u

void st_dequant_init(st_dequant *d) {
  if (d == NULL)
    return;
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
}

/* -- float conversions (round to nearest even; as torch converts) ---------- */

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static uint16_t to_bf16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  /* NaN: torch's canonical quiet NaN (a select, so the loop vectorizes) */
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r);
}

static uint16_t to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  /* Below 2^-14: adding 0.5 leaves the value's multiple of 2^-24 (the
   * subnormal step) in the low mantissa bits, rounded to nearest even. */
  uint32_t sub = f32_bits(bits_f32(ax) + 0.5f) - 0x3f000000u;
  /* Normal: rebias the exponent 127 -> 15 and round (wraps harmlessly where
   * it is not selected). */
  uint32_t nrm = (ax + 0xc8000fffu + ((ax >> 13) & 1u)) >> 13;
  uint32_t r = ax < 0x38800000u ? sub : nrm;
  r = ax >= 0x477ff000u ? 0x7c00u : r; /* 65520 and up: infinity */
  r = ax > 0x7f800000u ? 0x7e00u : r;  /* NaN */
  return (uint16_t)(sign | r);
}

/* -- element decoders ------------------------------------------------------- */

/* The 256 values of an 8-bit float with mbits mantissa bits and this bias
 * (e4m3fn: no infinities, only S.1111.111 is NaN; e5m2: IEEE-like). */
static void fp8_table(float lut[256], unsigned mbits, int bias, int ieee) {
  unsigned v;
  unsigned ebits = 7u - mbits;
  unsigned emax = (1u << ebits) - 1u;
  for (v = 0; v < 256u; v++) {
    uint32_t sign = (uint32_t)(v >> 7) << 31;
    unsigned e = (v >> mbits) & emax;
    unsigned m = v & ((1u << mbits) - 1u);
    if ((ieee && e == emax && m != 0) ||
        (!ieee && e == emax && m == (1u << mbits) - 1u)) {
      lut[v] = bits_f32(sign | 0x7fc00000u);
    } else if (ieee && e == emax) {
      lut[v] = bits_f32(sign | 0x7f800000u);
    } else if (e == 0) {
      /* m * 2^(1 - bias - mbits), exact in float */
      float step = bits_f32((uint32_t)(127 + 1 - bias - (int)mbits) << 23);
      float mag = (float)m * step;
      lut[v] = bits_f32(sign | f32_bits(mag));
    } else {
      lut[v] = bits_f32(sign | ((uint32_t)((int)e - bias + 127) << 23) |
                        ((uint32_t)m << (23u - mbits)));
    }
  }
}

static const float e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                               4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                               -2.0f, -3.0f, -4.0f, -6.0f};

/* An E2M1 code's value from its bits (what e2m1[] holds), without a table
 * lookup so that the loop vectorizes: codes 2..7 are normal (exponent
 * (code >> 1) - 1, one mantissa bit), 1 is 0.5, 0 is zero. */
static float fp4_value(unsigned code) {
  unsigned mag = code & 7u;
  uint32_t normal = ((uint32_t)((mag >> 1) + 126u) << 23) | ((uint32_t)(mag & 1u) << 22);
  uint32_t bits = mag >= 2u ? normal : (mag == 1u ? 0x3f000000u : 0u);
  return bits_f32(bits | ((uint32_t)(code & 8u) << 28));
}

/* Values [c0, c0 + n) of one row into out (n <= TILE; c0 a multiple of
 * TILE). Full tiles of the common encodings take loops of a fixed shape. */
static void decode(const st_dequant *d, const unsigned char *row, uint64_t rb,
                   const float *lut, uint64_t c0, unsigned n, float *out) {
  unsigned i;
  if (d->element == ST_QUANT_INT_PACKED) {
    float off = (float)(1u << (d->bits - 1u));
    if (d->bits == 8) {
      const unsigned char *p = row + c0;
      for (i = 0; i < n; i++)
        out[i] = (float)p[i] - off;
    } else if (d->bits == 4 && n == TILE) {
      const unsigned char *p = row + c0 / 2u;
      for (i = 0; i < TILE / 2u; i++) {
        out[2u * i] = (float)(p[i] & 15u) - off;
        out[2u * i + 1u] = (float)(p[i] >> 4) - off;
      }
    } else {
      unsigned bits = d->bits;
      unsigned mask = (1u << bits) - 1u;
      for (i = 0; i < n; i++) {
        uint64_t pos = (c0 + i) * bits;
        uint64_t k = pos >> 3;
        unsigned hi = k + 1 < rb ? row[k + 1] : 0u; /* never past the row */
        unsigned pair = row[k] | (hi << 8);
        out[i] = (float)((pair >> (pos & 7u)) & mask) - off;
      }
    }
  } else if (d->element == ST_QUANT_FP4_E2M1) {
    /* cols is even and c0 a multiple of TILE: whole bytes only */
    const unsigned char *p = row + c0 / 2u;
    if (n == TILE) {
      for (i = 0; i < TILE / 2u; i++) {
        out[2u * i] = fp4_value(p[i] & 15u);
        out[2u * i + 1u] = fp4_value(p[i] >> 4);
      }
    } else {
      for (i = 0; i + 1u < n; i += 2u) {
        out[i] = e2m1[p[i / 2u] & 15u];
        out[i + 1u] = e2m1[p[i / 2u] >> 4];
      }
    }
  } else {
    const unsigned char *p = row + c0;
    for (i = 0; i < n; i++)
      out[i] = lut[p[i]];
  }
}

/* Bytes of one stored row, 0 when cols or bits do not fit the element. */
static uint64_t row_bytes(const st_dequant *d) {
  uint64_t bits;
  switch (d->element) {
  case ST_QUANT_INT_PACKED:
    if (d->bits < 1 || d->bits > 8 || st__mul_overflow_u64(d->cols, d->bits, &bits) ||
        bits > UINT64_MAX - 31u)
      return 0;
    return (bits + 31u) / 32u * 4u;
  case ST_QUANT_FP8_E4M3:
  case ST_QUANT_FP8_E5M2:
    return d->bits == 0 ? d->cols : 0;
  case ST_QUANT_FP4_E2M1:
    return d->bits == 0 && d->cols % 2u == 0 ? d->cols / 2u : 0;
  default:
    return 0;
  }
}

static st_status bad(st_error *err, const char *message) {
  return st__fail(err, ST_ERR_INVALID_ARGUMENT, message, ST_NO_OFFSET, NULL, 0, 0);
}

st_status st_dequantize(const st_dequant *d, uint64_t row_begin, uint64_t row_end,
                        void *dst, size_t dst_size, st_error *err) {
  uint64_t rb, srows, scols, nscale, need, out_size, r;
  size_t k, esize;
  float lut[256];
  if (d == NULL || d->struct_size != sizeof *d)
    return bad(err, "st_dequant is NULL or of another size");
  for (k = 0; k < sizeof d->reserved / sizeof d->reserved[0]; k++)
    if (d->reserved[k] != 0)
      return bad(err, "st_dequant.reserved is not zero");
  if ((d->flags & ~ST_DEQUANT_TRANSPOSED) != 0)
    return bad(err, "unknown st_dequant.flags");
  if ((d->flags & ST_DEQUANT_TRANSPOSED)
          ? d->matrix_rows == 0 || d->rows % d->matrix_rows != 0
          : d->matrix_rows != 0)
    return bad(err, "matrix_rows does not fit the flags and rows");
  if (d->out_dtype == ST_BF16 || d->out_dtype == ST_F16)
    esize = 2;
  else if (d->out_dtype == ST_F32)
    esize = 4;
  else
    return bad(err, "out_dtype must be ST_BF16, ST_F16 or ST_F32");
  rb = row_bytes(d);
  if (d->rows == 0 || d->cols == 0 || rb == 0)
    return bad(err, "element, bits and shape do not fit together");
  if (d->scale_rows == 0 || d->scale_cols == 0 || d->scale == NULL)
    return bad(err, "scale, scale_rows and scale_cols are required");
  srows = d->rows / d->scale_rows + (d->rows % d->scale_rows != 0);
  scols = d->cols / d->scale_cols + (d->cols % d->scale_cols != 0);
  if (st__mul_overflow_u64(srows, scols, &nscale) || nscale != d->scale_count)
    return bad(err, "scale_count is not the number of scales");
  if (d->zero != NULL ? d->zero_count != nscale : d->zero_count != 0)
    return bad(err, "zero_count is not the number of scales");
  if (d->q == NULL || st__mul_overflow_u64(rb, d->rows, &need) || need > d->q_size)
    return bad(err, "q_size does not hold every row");
  if (row_begin > row_end || row_end > d->rows)
    return bad(err, "the row range is outside the rows");
  if (st__mul_overflow_u64((d->flags & ST_DEQUANT_TRANSPOSED) ? d->rows
                                                              : row_end - row_begin,
                           d->cols, &out_size) ||
      st__mul_overflow_u64(out_size, esize, &out_size) || out_size > dst_size ||
      (dst == NULL && out_size > 0))
    return st__fail(err, ST_ERR_BUFFER_TOO_SMALL, "dst_size is too small", ST_NO_OFFSET,
                    NULL, 0, 0);
  if (d->element == ST_QUANT_FP8_E4M3)
    fp8_table(lut, 3, 7, 0);
  else if (d->element == ST_QUANT_FP8_E5M2)
    fp8_table(lut, 2, 15, 1);

  for (r = row_begin; r < row_end; r++) {
    const unsigned char *row = (const unsigned char *)d->q + r * rb;
    const float *srow = d->scale + (r / d->scale_rows) * scols;
    const float *zrow = d->zero != NULL ? d->zero + (r / d->scale_rows) * scols : NULL;
    unsigned char *orow = (unsigned char *)dst + (r - row_begin) * d->cols * esize;
    /* transposed: value (r, c) goes to [r / m][c][r % m] */
    uint64_t m = d->matrix_rows;
    unsigned char *tbase =
        m != 0 ? (unsigned char *)dst + ((r / m) * d->cols * m + r % m) * esize : NULL;
    uint64_t c0;
    for (c0 = 0; c0 < d->cols; c0 += TILE) {
      float v[TILE];
      unsigned n = d->cols - c0 < TILE ? (unsigned)(d->cols - c0) : TILE;
      unsigned i;
      uint64_t g0 = c0 / d->scale_cols, g1 = (c0 + n - 1u) / d->scale_cols;
      decode(d, row, rb, lut, c0, n, v);
      for (i = n; i < TILE; i++)
        v[i] = 0.0f;
      if (g0 == g1) { /* one scale over the tile */
        float s = srow[g0];
        float z = zrow != NULL ? zrow[g0] : 0.0f;
        for (i = 0; i < TILE; i++)
          v[i] = (v[i] - z) * s;
      } else { /* groups narrower than a tile: a run per group */
        uint64_t g = g0;
        unsigned i0 = 0;
        while (i0 < n) {
          uint64_t end = (g + 1) * d->scale_cols - c0;
          unsigned i1 = end < n ? (unsigned)end : n;
          float s = srow[g];
          float z = zrow != NULL ? zrow[g] : 0.0f;
          for (i = i0; i < i1; i++)
            v[i] = (v[i] - z) * s;
          i0 = i1;
          g++;
        }
      }
      if (d->out_dtype == ST_F32) {
        if (tbase == NULL)
          memcpy(orow + c0 * 4u, v, (size_t)n * 4u);
        else
          for (i = 0; i < n; i++)
            memcpy(tbase + ((c0 + i) * m) * 4u, &v[i], 4u);
      } else {
        uint16_t h[TILE];
        if (d->out_dtype == ST_BF16)
          for (i = 0; i < TILE; i++)
            h[i] = to_bf16(v[i]);
        else
          for (i = 0; i < TILE; i++)
            h[i] = to_f16(v[i]);
        if (tbase == NULL)
          memcpy(orow + c0 * 2u, h, (size_t)n * 2u);
        else
          for (i = 0; i < n; i++)
            memcpy(tbase + ((c0 + i) * m) * 2u, &h[i], 2u);
      }
    }
  }
  st__ok(err);
  return ST_OK;
}
