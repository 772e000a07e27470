// The dtype table's torch columns and the bindings' view policy
// (st_tensor_torch_view): every dtype's mapping, F4 with even and odd last
// dimensions, F6, and data that is not aligned to its element size.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "safetensors.h"
#include "testutil.h"

namespace {

struct Row {
  st_dtype dtype;
  const char *torch;
  const char *c10;
  unsigned values;
};

const Row kRows[] = {
    {ST_BOOL, "bool", "Bool", 1},
    {ST_F4, "float4_e2m1fn_x2", "Float4_e2m1fn_x2", 2},
    {ST_F6_E2M3, "uint8", "Byte", 0},
    {ST_F6_E3M2, "uint8", "Byte", 0},
    {ST_U8, "uint8", "Byte", 1},
    {ST_I8, "int8", "Char", 1},
    {ST_F8_E5M2, "float8_e5m2", "Float8_e5m2", 1},
    {ST_F8_E4M3, "float8_e4m3fn", "Float8_e4m3fn", 1},
    {ST_F8_E8M0, "float8_e8m0fnu", "Float8_e8m0fnu", 1},
    {ST_F8_E4M3FNUZ, "float8_e4m3fnuz", "Float8_e4m3fnuz", 1},
    {ST_F8_E5M2FNUZ, "float8_e5m2fnuz", "Float8_e5m2fnuz", 1},
    {ST_I16, "int16", "Short", 1},
    {ST_U16, "uint16", "UInt16", 1},
    {ST_F16, "float16", "Half", 1},
    {ST_BF16, "bfloat16", "BFloat16", 1},
    {ST_I32, "int32", "Int", 1},
    {ST_U32, "uint32", "UInt32", 1},
    {ST_F32, "float32", "Float", 1},
    {ST_C64, "complex64", "ComplexFloat", 1},
    {ST_F64, "float64", "Double", 1},
    {ST_I64, "int64", "Long", 1},
    {ST_U64, "uint64", "UInt64", 1},
};

TEST(DtypeTorch, EveryDtypeHasItsTorchNames) {
  static_assert(sizeof kRows / sizeof kRows[0] == ST_DTYPE_COUNT, "a row per dtype");
  for (const Row &r : kRows) {
    SCOPED_TRACE(st_dtype_name(r.dtype));
    EXPECT_STREQ(st_dtype_torch_name(r.dtype), r.torch);
    EXPECT_STREQ(st_dtype_c10_name(r.dtype), r.c10);
    EXPECT_EQ(st_dtype_torch_values(r.dtype), r.values);
    st_dtype back;
    if (r.values == 0) continue;  // raw bytes: uint8 saves as U8, never F6
    ASSERT_EQ(st_dtype_from_torch_name(r.torch, strlen(r.torch), &back), ST_OK);
    EXPECT_EQ(back, r.dtype);
    ASSERT_EQ(st_dtype_from_torch_name(r.c10, strlen(r.c10), &back), ST_OK);
    EXPECT_EQ(back, r.dtype);
    const std::string prefixed = std::string("torch.") + r.torch;
    ASSERT_EQ(st_dtype_from_torch_name(prefixed.data(), prefixed.size(), &back), ST_OK);
    EXPECT_EQ(back, r.dtype);
  }
}

TEST(DtypeTorch, OutOfRangeAndUnknownNames) {
  const st_dtype bad = static_cast<st_dtype>(ST_DTYPE_COUNT);
  EXPECT_EQ(st_dtype_torch_name(bad), nullptr);
  EXPECT_EQ(st_dtype_c10_name(bad), nullptr);
  EXPECT_EQ(st_dtype_torch_values(bad), 0u);
  st_dtype out = ST_F32;
  EXPECT_EQ(st_dtype_from_torch_name("float", 5, &out), ST_ERR_NOT_FOUND);
  EXPECT_EQ(st_dtype_from_torch_name("torch.", 6, &out), ST_ERR_NOT_FOUND);
  EXPECT_EQ(st_dtype_from_torch_name("float32x", 7, &out), ST_OK);  // len cuts it
  EXPECT_EQ(st_dtype_from_torch_name("float3", 6, &out), ST_ERR_NOT_FOUND);
  EXPECT_EQ(st_dtype_from_torch_name(nullptr, 0, &out), ST_ERR_NOT_FOUND);
  EXPECT_EQ(st_dtype_from_torch_name("float32", 7, nullptr), ST_ERR_NOT_FOUND);
}

struct ViewCase {
  const char *name;
  std::string header;  // the entry of tensor "t" (and any before it)
  std::string data;
  uint32_t flags;
  uint64_t element_size, numel, last_dim;
  uint32_t rank;
  const char *torch;
};

class View : public ::testing::TestWithParam<ViewCase> {};

TEST_P(View, Policy) {
  const ViewCase &c = GetParam();
  // Pad the header with spaces so the data section starts 8-byte aligned;
  // the cases that want misalignment put a small tensor first.
  std::string header = c.header;
  while ((8 + header.size()) % 8 != 0) header += ' ';
  const std::string file = sttest::make_file(header, c.data);
  for (int backend = 0; backend < 3; ++backend) {
    SCOPED_TRACE(backend);
    st_file *f = nullptr;
    st_error err;
    const std::string path = sttest::temp_path(std::string("view-") + c.name);
    if (backend == 0) {
      ASSERT_EQ(st_open_memory(file.data(), file.size(), nullptr, &f, &err), ST_OK)
          << err.message;
    } else {
      ASSERT_TRUE(sttest::write_bytes(path, file));
      st_open_options o;
      st_open_options_init(&o);
      o.backend = backend == 1 ? ST_BACKEND_MMAP : ST_BACKEND_PREAD;
      ASSERT_EQ(st_open(path.c_str(), &o, &f, &err), ST_OK) << err.message;
    }
    size_t i;
    ASSERT_EQ(st_tensor_find(f, "t", 1, &i), ST_OK);
    st_torch_view v;
    memset(&v, 0xab, sizeof v);
    ASSERT_EQ(st_tensor_torch_view(f, i, &v), ST_OK);
    if (backend == 0 && reinterpret_cast<uintptr_t>(file.data()) % 8 != 0) {
      // std::string storage is 16-byte aligned on every platform we build
      // for; a misaligned buffer would change the COPY answer.
      GTEST_FAIL() << "unexpectedly unaligned test buffer";
    }
    EXPECT_EQ(v.flags, c.flags);
    EXPECT_EQ(v.element_size, c.element_size);
    EXPECT_EQ(v.numel, c.numel);
    EXPECT_EQ(v.rank, c.rank);
    EXPECT_EQ(v.last_dim, c.last_dim);
    EXPECT_STREQ(v.torch_name, c.torch);
    EXPECT_EQ(v.reserved0, 0u);
    for (uint64_t r : v.reserved) EXPECT_EQ(r, 0u);
    EXPECT_EQ(st_tensor_torch_view(f, st_tensor_count(f), &v), ST_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(st_tensor_torch_view(f, i, nullptr), ST_ERR_INVALID_ARGUMENT);
    st_close(f);
  }
  EXPECT_EQ(st_tensor_torch_view(nullptr, 0, nullptr), ST_ERR_INVALID_ARGUMENT);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, View,
    ::testing::Values(
        ViewCase{"f32", R"({"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
                 std::string(24, '\0'), 0, 4, 6, 3, 2, "float32"},
        ViewCase{"f4_even", R"({"t":{"dtype":"F4","shape":[3,4],"data_offsets":[0,6]}})",
                 std::string(6, '\0'), ST_VIEW_PACKED, 1, 6, 2, 2, "float4_e2m1fn_x2"},
        ViewCase{"f4_odd", R"({"t":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})",
                 std::string(3, '\0'), ST_VIEW_FLAT, 1, 3, 3, 1, "float4_e2m1fn_x2"},
        ViewCase{"f6", R"({"t":{"dtype":"F6_E2M3","shape":[2,4],"data_offsets":[0,6]}})",
                 std::string(6, '\0'), ST_VIEW_FLAT, 1, 6, 6, 1, "uint8"},
        ViewCase{"f6_e3m2", R"({"t":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[0,3]}})",
                 std::string(3, '\0'), ST_VIEW_FLAT, 1, 3, 3, 1, "uint8"},
        ViewCase{"misaligned",
                 R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                 R"("t":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
                 std::string(9, '\0'), ST_VIEW_COPY, 4, 2, 2, 1, "float32"},
        ViewCase{"misaligned_f16",
                 R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                 R"("t":{"dtype":"F16","shape":[1,1],"data_offsets":[1,3]}})",
                 std::string(3, '\0'), ST_VIEW_COPY, 2, 1, 1, 2, "float16"},
        ViewCase{"u8_after_u8",
                 R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                 R"("t":{"dtype":"I8","shape":[],"data_offsets":[1,2]}})",
                 std::string(2, '\0'), 0, 1, 1, 0, 0, "int8"},
        ViewCase{"empty_f64", R"({"t":{"dtype":"F64","shape":[0,5],"data_offsets":[0,0]}})",
                 "", 0, 8, 0, 5, 2, "float64"}),
    [](const ::testing::TestParamInfo<ViewCase> &i) { return std::string(i.param.name); });

// st_torch_view_of: the same policy for any file shape (a slice's).
TEST(DtypeTorch, ViewOfAnyShape) {
  st_torch_view v;
  const uint64_t even[2] = {3, 4}, odd[2] = {2, 3}, f6[1] = {4}, big[2] = {UINT64_MAX, 2};
  ASSERT_EQ(st_torch_view_of(ST_F4, even, 2, &v), ST_OK);
  EXPECT_EQ(v.flags, ST_VIEW_PACKED);
  EXPECT_EQ(v.rank, 2u);
  EXPECT_EQ(v.last_dim, 2u);
  EXPECT_EQ(v.numel, 6u);
  ASSERT_EQ(st_torch_view_of(ST_F4, odd, 2, &v), ST_OK);
  EXPECT_EQ(v.flags, ST_VIEW_FLAT);
  EXPECT_EQ(v.rank, 1u);
  EXPECT_EQ(v.numel, 3u);
  ASSERT_EQ(st_torch_view_of(ST_F6_E3M2, f6, 1, &v), ST_OK);
  EXPECT_EQ(v.flags, ST_VIEW_FLAT);
  EXPECT_EQ(v.numel, 3u);
  EXPECT_STREQ(v.torch_name, "uint8");
  ASSERT_EQ(st_torch_view_of(ST_BF16, odd, 2, &v), ST_OK);
  EXPECT_EQ(v.flags, 0u);
  EXPECT_EQ(v.element_size, 2u);
  EXPECT_EQ(v.numel, 6u);
  EXPECT_EQ(v.last_dim, 3u);
  ASSERT_EQ(st_torch_view_of(ST_I64, nullptr, 0, &v), ST_OK);  // a scalar
  EXPECT_EQ(v.rank, 0u);
  EXPECT_EQ(v.numel, 1u);
  // Not whole bytes, overflow, bad arguments: refused, never a wrong answer.
  const uint64_t one[1] = {1};
  EXPECT_EQ(st_torch_view_of(ST_F4, one, 1, &v), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_torch_view_of(ST_F32, big, 2, &v), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_torch_view_of(ST_F32, nullptr, 1, &v), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_torch_view_of(ST_F32, one, 1, nullptr), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_torch_view_of(static_cast<st_dtype>(ST_DTYPE_COUNT), one, 1, &v),
            ST_ERR_INVALID_ARGUMENT);
}

}  // namespace
