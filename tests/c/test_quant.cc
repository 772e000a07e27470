// st_dequantize (include/safetensors.h, "Dequantization"): values of each
// element encoding computed here from the definitions, exact buffers (so the
// sanitizer build catches any read past a row or the input), and a case per
// refusal with its status.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "safetensors.h"

namespace {

float bf16_value(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Exactly n bytes on the heap (no slack for an overread to hide in).
std::unique_ptr<unsigned char[]> exact(const std::vector<unsigned char> &v) {
  std::unique_ptr<unsigned char[]> p(new unsigned char[v.size()]);
  std::memcpy(p.get(), v.data(), v.size());
  return p;
}

st_dequant spec(uint32_t element, uint32_t bits, uint64_t rows, uint64_t cols) {
  st_dequant d;
  st_dequant_init(&d);
  d.element = element;
  d.bits = bits;
  d.out_dtype = ST_F32;
  d.rows = rows;
  d.cols = cols;
  d.scale_rows = 1;
  d.scale_cols = cols;
  return d;
}

// Dense LSB-first packing of unsigned values into rows of int32 words.
std::vector<unsigned char> pack(const std::vector<unsigned> &vals, unsigned bits,
                                uint64_t rows, uint64_t cols) {
  uint64_t words = (cols * bits + 31) / 32;
  std::vector<unsigned char> out(rows * words * 4, 0);
  for (uint64_t r = 0; r < rows; r++)
    for (uint64_t c = 0; c < cols; c++) {
      uint64_t pos = c * bits;
      for (unsigned b = 0; b < bits; b++) {
        uint64_t bit = pos + b;
        if ((vals[r * cols + c] >> b) & 1u)
          out[r * words * 4 + bit / 8] |= static_cast<unsigned char>(1u << (bit % 8));
      }
    }
  return out;
}

TEST(Dequant, PackedIntegersOfEveryWidth) {
  for (unsigned bits = 1; bits <= 8; bits++) {
    for (uint64_t cols : {1u, 7u, 16u, 32u, 33u, 100u}) {
      const uint64_t rows = 3;
      std::vector<unsigned> vals(rows * cols);
      for (size_t i = 0; i < vals.size(); i++)
        vals[i] = static_cast<unsigned>((i * 7 + 3) % (1u << bits));
      std::vector<unsigned char> packed = pack(vals, bits, rows, cols);
      auto q = exact(packed);
      std::vector<float> scale = {0.5f, 2.0f, -1.0f};
      std::vector<float> zero = {1.0f, 0.0f, -2.0f};
      st_dequant d = spec(ST_QUANT_INT_PACKED, bits, rows, cols);
      d.q = q.get();
      d.q_size = packed.size();
      d.scale = scale.data();
      d.scale_count = 3;
      d.zero = zero.data();
      d.zero_count = 3;
      std::vector<float> out(rows * cols);
      ASSERT_EQ(st_dequantize(&d, 0, rows, out.data(), out.size() * 4, nullptr), ST_OK);
      for (uint64_t r = 0; r < rows; r++)
        for (uint64_t c = 0; c < cols; c++) {
          float q0 = static_cast<float>(vals[r * cols + c]) -
                     static_cast<float>(1u << (bits - 1));
          ASSERT_EQ(out[r * cols + c], (q0 - zero[r]) * scale[r])
              << bits << " bits, " << cols << " cols, at " << r << "," << c;
        }
    }
  }
}

TEST(Dequant, Fp8Fp4AndBlocksToBf16) {
  // e4m3fn 0x38 = 1.0, 0x7e = 448, 0x01 = 2^-9, 0xff = NaN; e2m1 nibbles 0x3 = 1.5,
  // 0xf = -6. A 3x4 result with 2x2 blocks (a partial block row).
  std::vector<unsigned char> fp8 = {0x38, 0x7e, 0x01, 0xb8, 0x38, 0x38,
                                    0x38, 0x38, 0x38, 0x38, 0x38, 0xff};
  std::vector<float> scale = {1.0f, 2.0f, 4.0f, 8.0f};
  auto q = exact(fp8);
  st_dequant d = spec(ST_QUANT_FP8_E4M3, 0, 3, 4);
  d.out_dtype = ST_BF16;
  d.q = q.get();
  d.q_size = fp8.size();
  d.scale = scale.data();
  d.scale_count = 4;
  d.scale_rows = 2;
  d.scale_cols = 2;
  std::vector<uint16_t> out(12);
  ASSERT_EQ(st_dequantize(&d, 0, 3, out.data(), 24, nullptr), ST_OK);
  EXPECT_EQ(bf16_value(out[0]), 1.0f);
  EXPECT_EQ(bf16_value(out[1]), 448.0f);
  EXPECT_EQ(bf16_value(out[2]), std::ldexp(1.0f, -9) * 2.0f);
  EXPECT_EQ(bf16_value(out[3]), -2.0f);
  EXPECT_EQ(bf16_value(out[8]), 4.0f);   // row 2: the second block row
  EXPECT_EQ(bf16_value(out[10]), 8.0f);
  EXPECT_TRUE(std::isnan(bf16_value(out[11])));

  std::vector<unsigned char> fp4 = {0xf3};  // low nibble first: 1.5, -6
  std::vector<float> one = {1.0f};
  auto q4 = exact(fp4);
  st_dequant e = spec(ST_QUANT_FP4_E2M1, 0, 1, 2);
  e.q = q4.get();
  e.q_size = 1;
  e.scale = one.data();
  e.scale_count = 1;
  float o[2];
  ASSERT_EQ(st_dequantize(&e, 0, 1, o, sizeof o, nullptr), ST_OK);
  EXPECT_EQ(o[0], 1.5f);
  EXPECT_EQ(o[1], -6.0f);
}

TEST(Dequant, TransposedMatrices) {
  // Two 3x4 matrices of 8-bit values, written [2][4][3]; each row range alone.
  std::vector<unsigned char> bytes(6 * 4);
  for (size_t i = 0; i < bytes.size(); i++)
    bytes[i] = static_cast<unsigned char>(128 + i);
  std::vector<float> scale(6, 1.0f);
  st_dequant d = spec(ST_QUANT_INT_PACKED, 8, 6, 4);
  d.q = bytes.data();
  d.q_size = bytes.size();
  d.scale = scale.data();
  d.scale_count = 6;
  d.flags = ST_DEQUANT_TRANSPOSED;
  d.matrix_rows = 3;
  std::vector<float> out(24, -1.0f);
  ASSERT_EQ(st_dequantize(&d, 0, 4, out.data(), 96, nullptr), ST_OK);
  ASSERT_EQ(st_dequantize(&d, 4, 6, out.data(), 96, nullptr), ST_OK);
  for (int e = 0; e < 2; e++)
    for (int r = 0; r < 3; r++)
      for (int c = 0; c < 4; c++)
        EXPECT_EQ(out[static_cast<size_t>(e * 12 + c * 3 + r)],
                  static_cast<float>((e * 3 + r) * 4 + c));
  st_error err;
  d.matrix_rows = 4;  // does not divide 6
  EXPECT_EQ(st_dequantize(&d, 0, 6, out.data(), 96, &err), ST_ERR_INVALID_ARGUMENT);
  d.matrix_rows = 3;
  EXPECT_EQ(st_dequantize(&d, 4, 6, out.data(), 95, &err), ST_ERR_BUFFER_TOO_SMALL);
  d.flags = 0;  // matrix_rows without the flag
  EXPECT_EQ(st_dequantize(&d, 0, 6, out.data(), 96, &err), ST_ERR_INVALID_ARGUMENT);
}

TEST(Dequant, RowRangesAreIndependent) {
  std::vector<unsigned char> bytes(4 * 8);
  for (size_t i = 0; i < bytes.size(); i++)
    bytes[i] = static_cast<unsigned char>(i);
  std::vector<float> scale = {1.0f, 1.0f, 1.0f, 1.0f};
  st_dequant d = spec(ST_QUANT_INT_PACKED, 8, 4, 8);
  d.q = bytes.data();
  d.q_size = bytes.size();
  d.scale = scale.data();
  d.scale_count = 4;
  std::vector<float> all(32), part(16);
  ASSERT_EQ(st_dequantize(&d, 0, 4, all.data(), 128, nullptr), ST_OK);
  ASSERT_EQ(st_dequantize(&d, 2, 4, part.data(), 64, nullptr), ST_OK);
  EXPECT_EQ(0, std::memcmp(all.data() + 16, part.data(), 64));
}

TEST(Dequant, Refusals) {
  std::vector<unsigned char> bytes(4 * 8, 0);
  std::vector<float> scale(4, 1.0f);
  std::vector<float> out(32);
  auto base = [&]() {
    st_dequant d = spec(ST_QUANT_INT_PACKED, 8, 4, 8);
    d.q = bytes.data();
    d.q_size = bytes.size();
    d.scale = scale.data();
    d.scale_count = 4;
    return d;
  };
  st_dequant ok = base();
  ASSERT_EQ(st_dequantize(&ok, 0, 4, out.data(), 128, nullptr), ST_OK);
  struct Case {
    const char *what;
    void (*mutate)(st_dequant *);
    st_status status;
  };
  const Case cases[] = {
      {"struct_size", [](st_dequant *d) { d->struct_size = 8; }, ST_ERR_INVALID_ARGUMENT},
      {"reserved", [](st_dequant *d) { d->reserved[6] = 1; }, ST_ERR_INVALID_ARGUMENT},
      {"flags", [](st_dequant *d) { d->flags = 2; }, ST_ERR_INVALID_ARGUMENT},
      {"out_dtype", [](st_dequant *d) { d->out_dtype = ST_I8; }, ST_ERR_INVALID_ARGUMENT},
      {"element", [](st_dequant *d) { d->element = 99; }, ST_ERR_INVALID_ARGUMENT},
      {"bits 9", [](st_dequant *d) { d->bits = 9; }, ST_ERR_INVALID_ARGUMENT},
      {"bits on fp8", [](st_dequant *d) { d->element = ST_QUANT_FP8_E4M3; },
       ST_ERR_INVALID_ARGUMENT},
      {"odd fp4", [](st_dequant *d) { d->element = ST_QUANT_FP4_E2M1; d->bits = 0;
                                      d->cols = 7; }, ST_ERR_INVALID_ARGUMENT},
      {"q_size", [](st_dequant *d) { d->q_size = 31; }, ST_ERR_INVALID_ARGUMENT},
      {"scale_count", [](st_dequant *d) { d->scale_count = 3; }, ST_ERR_INVALID_ARGUMENT},
      {"scale_rows", [](st_dequant *d) { d->scale_rows = 0; }, ST_ERR_INVALID_ARGUMENT},
      {"zero_count", [](st_dequant *d) { d->zero_count = 4; }, ST_ERR_INVALID_ARGUMENT},
      {"rows overflow", [](st_dequant *d) { d->rows = UINT64_MAX; },
       ST_ERR_INVALID_ARGUMENT},
      {"cols overflow", [](st_dequant *d) { d->cols = UINT64_MAX / 2; },
       ST_ERR_INVALID_ARGUMENT},
  };
  for (const Case &c : cases) {
    st_dequant d = base();
    c.mutate(&d);
    st_error err;
    EXPECT_EQ(st_dequantize(&d, 0, 4, out.data(), 128, &err), c.status) << c.what;
    EXPECT_EQ(err.code, c.status) << c.what;
  }
  st_dequant d = base();
  st_error err;
  EXPECT_EQ(st_dequantize(&d, 3, 5, out.data(), 128, &err), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_dequantize(&d, 3, 2, out.data(), 128, &err), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_dequantize(&d, 0, 4, out.data(), 127, &err), ST_ERR_BUFFER_TOO_SMALL);
  EXPECT_EQ(st_dequantize(nullptr, 0, 4, out.data(), 128, &err), ST_ERR_INVALID_ARGUMENT);
  st_dequant_init(nullptr);  // accepted, does nothing
}

}  // namespace
