// Resource bounds: huge legal headers and hostile extremes open (or fail) in
// memory proportional to the header. Memory is measured, not time: every
// case runs with a counting allocator and asserts the peak of live bytes the
// library held (the handle's caller-supplied allocator sees every
// allocation). Timings are printed for information only.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "safetensors.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ST_RES_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ST_RES_SANITIZED 1
#endif
#endif

namespace {

// Counts live and peak bytes; a 16-byte prefix keeps each block's size.
struct CountingAllocator {
  st_allocator alloc;
  size_t live = 0, peak = 0, calls = 0;

  static void *do_malloc(void *ctx, size_t size) {
    auto *c = static_cast<CountingAllocator *>(ctx);
    c->calls++;
    auto *p = static_cast<unsigned char *>(std::malloc(size + 16));
    if (p == nullptr) return nullptr;
    std::memcpy(p, &size, sizeof size);
    c->add(size);
    return p + 16;
  }
  static void *do_realloc(void *ctx, void *ptr, size_t size) {
    auto *c = static_cast<CountingAllocator *>(ctx);
    if (ptr == nullptr) return do_malloc(ctx, size);
    c->calls++;
    auto *base = static_cast<unsigned char *>(ptr) - 16;
    size_t old;
    std::memcpy(&old, base, sizeof old);
    auto *p = static_cast<unsigned char *>(std::realloc(base, size + 16));
    if (p == nullptr) return nullptr;
    std::memcpy(p, &size, sizeof size);
    c->live -= old;
    c->add(size);
    return p + 16;
  }
  static void do_free(void *ctx, void *ptr) {
    if (ptr == nullptr) return;
    auto *c = static_cast<CountingAllocator *>(ctx);
    auto *base = static_cast<unsigned char *>(ptr) - 16;
    size_t old;
    std::memcpy(&old, base, sizeof old);
    c->live -= old;
    std::free(base);
  }
  void add(size_t n) {
    live += n;
    if (live > peak) peak = live;
  }
  CountingAllocator() {
    alloc.malloc_fn = do_malloc;
    alloc.realloc_fn = do_realloc;
    alloc.free_fn = do_free;
    alloc.ctx = this;
  }
};

struct Result {
  st_status status;
  size_t peak;     // bytes held at the worst moment of the open
  size_t held;     // bytes held by the open handle
  double seconds;  // information only
  size_t ntensors, nmeta;
};

Result open_counted(const std::string &bytes, uint32_t extra_flags = 0) {
  CountingAllocator ca;
  st_open_options o;
  st_open_options_init(&o);
  o.allocator = &ca.alloc;
  o.flags |= extra_flags;
  st_file *f = nullptr;
  st_error err;
  auto t0 = std::chrono::steady_clock::now();
  Result r;
  r.status = st_open_memory(bytes.data(), bytes.size(), &o, &f, &err);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.held = ca.live;
  r.ntensors = st_tensor_count(f);
  r.nmeta = st_metadata_count(f);
  st_close(f);
  EXPECT_EQ(ca.live, 0u) << "leak";
  r.peak = ca.peak;
  return r;
}

void report(const char *what, size_t n, const Result &r) {
  std::printf("[ info ] %-34s N=%10zu status=%-28s peak=%10zu (%.2f x N) held=%10zu  %.3f s\n",
              what, n, st_status_name(r.status), r.peak,
              static_cast<double>(r.peak) / static_cast<double>(n ? n : 1), r.held, r.seconds);
}

// Base-62 names of fixed width: ASCII order equals numeric order.
std::string name62(size_t v, int width) {
  static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string s(static_cast<size_t>(width), '0');
  for (int p = width - 1; p >= 0; p--, v /= 62) s[static_cast<size_t>(p)] = digits[v % 62];
  return s;
}

std::string zero_size_header(size_t count) {
  std::string h;
  h.reserve(count * 57 + 2);
  h += "{";
  for (size_t i = 0; i < count; i++) {
    if (i) h += ",";
    h += "\"" + name62(count - 1 - i, 4) +
         "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  }
  h += "}";
  return h;
}

#ifdef ST_RES_SANITIZED
const size_t kScale = 8;  // sanitizer builds: an eighth of the sizes
#else
const size_t kScale = 1;
#endif

// The memory bound every case must meet: a small multiple of N plus slack.
// The worst case is the token array: 20 bytes per JSON token (common/json.h:
// type, start, end, size, next) and at most one token per 2 header bytes
// ("1," in a long array), so 10 x N, plus the tensor table. Measured: 5.9 x N
// for the 1.7M-tensor header, 6.9 x N for a million metadata keys, 10 x N for
// a million dims.
// (The reference needs about 14 x N for the 1.7M-tensor header.)
constexpr double kPerHeaderByte = 12.0;
constexpr size_t kSlack = 1 << 20;

void expect_bounded(const Result &r, size_t n) {
  EXPECT_LE(static_cast<double>(r.peak), kPerHeaderByte * static_cast<double>(n) + kSlack)
      << "peak " << r.peak << " for a header of " << n;
}

TEST(Resources, HugeLegalHeaderOfZeroSizeTensors) {
  const size_t count = 1700000 / kScale;
  std::string h = zero_size_header(count);
  ASSERT_LT(h.size(), ST_MAX_HEADER_SIZE);
  Result r = open_counted(sttest::make_file(h));
  report("1.7M zero-size tensors", h.size(), r);
  ASSERT_EQ(r.status, ST_OK);
  EXPECT_EQ(r.ntensors, count);
  expect_bounded(r, h.size());

  // Twice the tensors cost about twice the memory, never four times.
  std::string h2 = zero_size_header(count / 2);
  Result r2 = open_counted(sttest::make_file(h2));
  report("half as many", h2.size(), r2);
  ASSERT_EQ(r2.status, ST_OK);
  double ratio = static_cast<double>(r.peak) / static_cast<double>(r2.peak);
  EXPECT_GT(ratio, 1.5);
  EXPECT_LT(ratio, 2.6);
}

TEST(Resources, AMillionMetadataKeys) {
  const size_t count = 1000000 / kScale;
  std::string h = "{\"__metadata__\":{";
  h.reserve(count * 20);
  for (size_t i = 0; i < count; i++) {
    if (i) h += ",";
    h += "\"k" + name62(i, 5) + "\":\"v\"";
  }
  h += "}}";
  Result r = open_counted(sttest::make_file(h));
  report("1M metadata keys", h.size(), r);
  ASSERT_EQ(r.status, ST_OK);
  EXPECT_EQ(r.nmeta, count);
  expect_bounded(r, h.size());

  // The same keys with one duplicate at the very end: rejected, still bounded.
  std::string d = h.substr(0, h.size() - 2) + ",\"k" + name62(count / 2, 5) + "\":\"w\"}}";
  Result rd = open_counted(sttest::make_file(d));
  report("1M metadata keys, late duplicate", d.size(), rd);
  EXPECT_EQ(rd.status, ST_ERR_DUPLICATE_KEY);
  expect_bounded(rd, d.size());
}

TEST(Resources, NinetyMegabyteMetadataString) {
  const size_t len = 90000000 / kScale;
  std::string h = "{\"__metadata__\":{\"big\":\"";
  h.append(len, 'x');
  h += "\"}}";
  Result r = open_counted(sttest::make_file(h));
  report("90 MB metadata string", h.size(), r);
  ASSERT_EQ(r.status, ST_OK);
  EXPECT_EQ(r.nmeta, 1u);
  expect_bounded(r, h.size());

  // Escapes everywhere: every one decodes, still linear.
  std::string e = "{\"__metadata__\":{\"big\":\"";
  for (size_t i = 0; i < len / 12; i++) e += "\\u00e9\\n\\\"\\/";
  e += "\"}}";
  Result re = open_counted(sttest::make_file(e));
  report("metadata string of escapes", e.size(), re);
  ASSERT_EQ(re.status, ST_OK);
  expect_bounded(re, e.size());
}

TEST(Resources, RankExtremes) {
  auto shape_file = [](size_t rank, const char *dim) {
    std::string h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[";
    for (size_t i = 0; i < rank; i++) {
      if (i) h += ",";
      h += dim;
    }
    h += "],\"data_offsets\":[0,1]}}";
    return sttest::make_file(h, "x");
  };
  Result r64 = open_counted(shape_file(64, "1"));
  EXPECT_EQ(r64.status, ST_OK);
  Result r65 = open_counted(shape_file(65, "1"));
  EXPECT_EQ(r65.status, ST_ERR_LIMIT);
  // A million dimensions: refused with a limit error, in memory bounded by N.
  std::string big = shape_file(1000000, "1");
  Result rm = open_counted(big);
  report("rank 1,000,000", big.size(), rm);
  EXPECT_EQ(rm.status, ST_ERR_LIMIT);
  expect_bounded(rm, big.size());
  // Dimensions of 2^64-1: the element count overflows.
  std::string ov = shape_file(2, "18446744073709551615");
  EXPECT_EQ(open_counted(ov).status, ST_ERR_VALIDATION_OVERFLOW);
}

TEST(Resources, HundredThousandDigitNumber) {
  std::string digits(100000, '7');
  // In a shape, in data_offsets, and in an unknown field: never through a
  // double, never quadratic, always a named status.
  const std::string cases[] = {
      "{\"t\":{\"dtype\":\"U8\",\"shape\":[" + digits + "],\"data_offsets\":[0,1]}}",
      "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0," + digits + "]}}",
      "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":" + digits + "}}",
      "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":0." + digits + "}}",
      "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":-" + digits + "e-99999}}",
  };
  const st_status want[] = {ST_ERR_HEADER_DESERIALIZATION, ST_ERR_HEADER_DESERIALIZATION,
                            ST_ERR_HEADER_DESERIALIZATION, ST_OK, ST_OK};
  for (size_t i = 0; i < 5; i++) {
    std::string f = sttest::make_file(cases[i], "x");
    Result r = open_counted(f);
    report("100,000-digit number", cases[i].size(), r);
    EXPECT_EQ(r.status, want[i]) << "case " << i;
    expect_bounded(r, cases[i].size());
  }
}

TEST(Resources, MillionLevelNesting) {
  const size_t depth = 1000000;
  std::string h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":";
  h.append(depth, '[');
  h.append(depth, ']');
  h += "}}";
  Result r = open_counted(sttest::make_file(h, "x"));
  report("a million levels of nesting", h.size(), r);
  EXPECT_EQ(r.status, ST_ERR_LIMIT);
  expect_bounded(r, h.size());
  // Unbalanced: a million opens and nothing else.
  std::string u = "{\"x\":" + std::string(depth, '{');
  Result ru = open_counted(sttest::make_file(u));
  EXPECT_NE(ru.status, ST_OK);
  expect_bounded(ru, u.size());
}

TEST(Resources, ManySmallTensorsWithData) {
  // Real (non-zero) tensors at scale: the table, not the data, costs memory.
  const size_t count = 400000 / kScale;
  std::string h = "{";
  h.reserve(count * 64);
  for (size_t i = 0; i < count; i++) {
    if (i) h += ",";
    h += "\"" + name62(i, 5) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
         std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  }
  h += "}";
  Result r = open_counted(sttest::make_file(h, std::string(count, 'd')));
  report("400k one-byte tensors", h.size(), r);
  ASSERT_EQ(r.status, ST_OK);
  EXPECT_EQ(r.ntensors, count);
  expect_bounded(r, h.size());
}

}  // namespace
