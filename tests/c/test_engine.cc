// The copy engine's correctness, apart from its speed: chunk boundaries,
// tensors smaller and larger than a chunk, zero-size tensors, slices, one and
// many threads, every backend giving bitwise-identical results.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"
#include "testutil.h"

namespace {

struct Spec {
  std::string name;
  std::vector<uint64_t> shape;  // F32 elements
};

// A valid F32 file with the given tensors laid out in order, data random.
std::string build(const std::vector<Spec> &specs, std::string *data_out) {
  std::mt19937 rng(1234);
  std::string header = "{";
  std::string data;
  for (size_t i = 0; i < specs.size(); i++) {
    uint64_t n = 1;
    for (uint64_t d : specs[i].shape) n *= d;
    uint64_t begin = data.size();
    for (uint64_t k = 0; k < n * 4; k++) data.push_back(static_cast<char>(rng() & 0xff));
    if (i > 0) header += ",";
    header += "\"" + specs[i].name + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t d = 0; d < specs[i].shape.size(); d++) {
      if (d > 0) header += ",";
      header += std::to_string(specs[i].shape[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(data.size()) + "]}";
  }
  header += "}";
  while (header.size() % 8 != 0) header += " ";
  *data_out = data;
  return sttest::make_file(header, data);
}

enum class Kind { kMmap, kPread, kMemory };

struct Opened {
  st_file *f = nullptr;
  ~Opened() { st_close(f); }
};

void open_kind(Kind kind, const std::string &path, const std::string &bytes, Opened *o) {
  st_open_options opts;
  st_open_options_init(&opts);
  st_status s;
  if (kind == Kind::kMemory) {
    s = st_open_memory(bytes.data(), bytes.size(), &opts, &o->f, nullptr);
  } else {
    opts.backend = kind == Kind::kMmap ? ST_BACKEND_MMAP : ST_BACKEND_PREAD;
    s = st_open(path.c_str(), &opts, &o->f, nullptr);
  }
  ASSERT_EQ(s, ST_OK);
}

class EngineTest : public ::testing::TestWithParam<std::tuple<Kind, uint32_t>> {};

TEST_P(EngineTest, WholeTensorsAcrossChunkBoundaries) {
  auto [kind, threads] = GetParam();
  // 64 KiB is the smallest chunk: tensors below, at, and well above it.
  std::vector<Spec> specs = {{"a", {3}},         {"b", {16384}}, {"c", {0}},
                             {"d", {16385}},     {"e", {100000}}, {"f", {}},
                             {"g", {7, 0, 3}},   {"h", {40000, 3}}};
  std::string data;
  std::string bytes = build(specs, &data);
  std::string path = sttest::temp_path("engine");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  Opened o;
  open_kind(kind, path, bytes, &o);
  ASSERT_NE(o.f, nullptr);

  st_plan *plan = nullptr;
  ASSERT_EQ(st_plan_new(o.f, nullptr, &plan, nullptr), ST_OK);
  std::vector<std::vector<char>> dst(st_tensor_count(o.f));
  for (size_t i = 0; i < st_tensor_count(o.f); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(o.f, i, &ti), ST_OK);
    dst[i].assign(ti.data_end - ti.data_begin + 1, '\x5a');  // one guard byte
    ASSERT_EQ(st_plan_add_tensor(plan, i, dst[i].data(), dst[i].size(), nullptr), ST_OK);
  }
  EXPECT_EQ(st_plan_bytes(plan), data.size());
  st_exec_options eo;
  st_exec_options_init(&eo);
  eo.threads = threads;
  eo.chunk_size = 64 << 10;
  st_exec_stats stats;
  st_error err;
  ASSERT_EQ(st_plan_execute(plan, &eo, &stats, &err), ST_OK) << err.message;
  EXPECT_EQ(stats.bytes_copied, data.size());
  EXPECT_LE(stats.threads_used, threads == 0 ? 256u : threads);
  for (size_t i = 0; i < st_tensor_count(o.f); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(o.f, i, &ti), ST_OK);
    size_t len = ti.data_end - ti.data_begin;
    EXPECT_EQ(0, std::memcmp(dst[i].data(), data.data() + ti.data_begin, len)) << ti.name;
    EXPECT_EQ(dst[i][len], '\x5a') << "guard byte overwritten for " << ti.name;
  }
  // A plan can run again.
  ASSERT_EQ(st_plan_execute(plan, &eo, nullptr, nullptr), ST_OK);
  st_plan_free(plan);
  std::remove(path.c_str());
}

TEST_P(EngineTest, SlicesMatchReadSlice) {
  auto [kind, threads] = GetParam();
  std::vector<Spec> specs = {{"m", {64, 48}}, {"t", {5, 6, 7}}, {"v", {1000}}};
  std::string data;
  std::string bytes = build(specs, &data);
  std::string path = sttest::temp_path("engine_slice");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  Opened o;
  open_kind(kind, path, bytes, &o);
  ASSERT_NE(o.f, nullptr);
  std::mt19937 rng(99);
  uint64_t planned = 0;
  for (int iter = 0; iter < 200; iter++) {
    size_t idx = rng() % st_tensor_count(o.f);
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(o.f, idx, &ti), ST_OK);
    std::vector<st_range> ranges;
    size_t nr = rng() % (ti.rank + 1);
    for (size_t d = 0; d < nr; d++) {
      int64_t dim = static_cast<int64_t>(ti.shape[d]);
      int64_t a = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * dim + 3)) - dim - 1;
      int64_t b = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * dim + 3)) - dim - 1;
      if (rng() % 4 == 0) b = ST_SLICE_END;
      int64_t step = 1 + static_cast<int64_t>(rng() % 3);
      ranges.push_back({a, b, step});
    }
    uint64_t nbytes = 0;
    ASSERT_EQ(st_slice_shape(o.f, idx, ranges.data(), ranges.size(), nullptr, &nbytes), ST_OK);
    std::vector<char> want(nbytes + 1, '\x11'), got(nbytes + 1, '\x22');
    ASSERT_EQ(st_tensor_read_slice(o.f, idx, ranges.data(), ranges.size(), want.data(), nbytes,
                                   nullptr),
              ST_OK);
    st_plan *plan = nullptr;
    ASSERT_EQ(st_plan_new(o.f, nullptr, &plan, nullptr), ST_OK);
    ASSERT_EQ(st_plan_add_slice(plan, idx, ranges.data(), ranges.size(), got.data(), nbytes, nullptr),
              ST_OK);
    EXPECT_EQ(st_plan_bytes(plan), nbytes);
    planned += st_plan_bytes(plan);
    st_exec_options eo;
    st_exec_options_init(&eo);
    eo.threads = threads;
    ASSERT_EQ(st_plan_execute(plan, &eo, nullptr, nullptr), ST_OK);
    st_plan_free(plan);
    EXPECT_EQ(0, std::memcmp(want.data(), got.data(), nbytes)) << "iteration " << iter;
    EXPECT_EQ(got[nbytes], '\x22');
  }
  EXPECT_GT(planned, 0u);
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Backends, EngineTest,
    ::testing::Combine(::testing::Values(Kind::kMmap, Kind::kPread, Kind::kMemory),
                       ::testing::Values(1u, 2u, 7u, 0u)));

TEST(Engine, RefusesBadInput) {
  std::string data;
  std::string bytes = build({{"x", {10}}}, &data);
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  st_plan *plan = nullptr;
  EXPECT_EQ(st_plan_new(nullptr, nullptr, &plan, nullptr), ST_ERR_INVALID_ARGUMENT);
  ASSERT_EQ(st_plan_new(f, nullptr, &plan, nullptr), ST_OK);
  char buf[64];
  st_error err;
  EXPECT_EQ(st_plan_add_range(plan, 30, 11, buf, &err), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(err.offset, 30u);
  EXPECT_EQ(st_plan_add_range(plan, UINT64_MAX, 2, buf, nullptr), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_plan_add_range(plan, 0, 4, nullptr, nullptr), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_plan_add_tensor(plan, 1, buf, sizeof buf, nullptr), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_plan_add_tensor(plan, 0, buf, 39, &err), ST_ERR_BUFFER_TOO_SMALL);
  EXPECT_STREQ(err.name, "x");
  st_range bad = {0, 5, 0};
  EXPECT_NE(st_plan_add_slice(plan, 0, &bad, 1, buf, sizeof buf, nullptr), ST_OK);
  EXPECT_EQ(st_plan_entry_count(plan), 0u);
  EXPECT_EQ(st_plan_bytes(plan), 0u);
  // An empty plan runs and copies nothing.
  st_exec_stats stats;
  ASSERT_EQ(st_plan_execute(plan, nullptr, &stats, nullptr), ST_OK);
  EXPECT_EQ(stats.bytes_copied, 0u);
  st_plan_free(plan);
  st_plan_free(nullptr);
  st_close(f);
}

// st_exec_options: unknown flag bits, non-zero reserved fields and a
// struct_size other than st_exec_options_init's are refused before anything
// is copied; every defined flag is accepted.
TEST(Engine, OptionsRefuseUnknownBitsReservedAndSize) {
  struct Case {
    const char *what;
    void (*mutate)(st_exec_options *);
    st_status want;
  };
  const Case cases[] = {
      {"defaults", [](st_exec_options *) {}, ST_OK},
      {"no prefault", [](st_exec_options *o) { o->flags = ST_EXEC_NO_PREFAULT; }, ST_OK},
      {"all defined flags", [](st_exec_options *o) { o->flags = ST_EXEC_ALL_FLAGS; }, ST_OK},
      {"flag 0x8", [](st_exec_options *o) { o->flags = 0x8u; }, ST_ERR_INVALID_ARGUMENT},
      {"flag 0x80000000", [](st_exec_options *o) { o->flags = 0x80000000u; }, ST_ERR_INVALID_ARGUMENT},
      {"reserved[0]", [](st_exec_options *o) { o->reserved[0] = 1; }, ST_ERR_INVALID_ARGUMENT},
      {"reserved[7]", [](st_exec_options *o) { o->reserved[7] = 1; }, ST_ERR_INVALID_ARGUMENT},
      {"struct_size 0", [](st_exec_options *o) { o->struct_size = 0; }, ST_ERR_INVALID_ARGUMENT},
      {"struct_size - 8", [](st_exec_options *o) { o->struct_size -= 8; }, ST_ERR_INVALID_ARGUMENT},
      {"struct_size + 8", [](st_exec_options *o) { o->struct_size += 8; }, ST_ERR_INVALID_ARGUMENT},
  };
  std::string data;
  std::string bytes = build({{"x", {10}}}, &data);
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  st_plan *plan = nullptr;
  ASSERT_EQ(st_plan_new(f, nullptr, &plan, nullptr), ST_OK);
  std::vector<char> out(data.size());
  ASSERT_EQ(st_plan_add_tensor(plan, 0, out.data(), out.size(), nullptr), ST_OK);
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    st_exec_options o;
    st_exec_options_init(&o);
    c.mutate(&o);
    std::fill(out.begin(), out.end(), 0);
    st_error err;
    EXPECT_EQ(st_plan_execute(plan, &o, nullptr, &err), c.want);
    EXPECT_EQ(err.code, c.want);
    EXPECT_EQ(std::string(out.data(), out.size()) == data, c.want == ST_OK);
  }
  st_plan_free(plan);
  st_close(f);
}

TEST(Engine, PreadReportsTruncation) {
  std::string data;
  std::string bytes = build({{"x", {100000}}}, &data);
  std::string path = sttest::temp_path("engine_trunc");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  st_open_options opts;
  st_open_options_init(&opts);
  opts.backend = ST_BACKEND_PREAD;
  st_file *f = nullptr;
  ASSERT_EQ(st_open(path.c_str(), &opts, &f, nullptr), ST_OK);
  ASSERT_EQ(truncate(path.c_str(), 1000), 0);
  std::vector<char> dst(400000);
  st_plan *plan = nullptr;
  ASSERT_EQ(st_plan_new(f, nullptr, &plan, nullptr), ST_OK);
  ASSERT_EQ(st_plan_add_tensor(plan, 0, dst.data(), dst.size(), nullptr), ST_OK);
  st_exec_options eo;
  st_exec_options_init(&eo);
  eo.threads = 2;
  st_error err;
  EXPECT_EQ(st_plan_execute(plan, &eo, nullptr, &err), ST_ERR_FILE_CHANGED);
  EXPECT_EQ(err.code, ST_ERR_FILE_CHANGED);
  st_plan_free(plan);
  st_close(f);
  std::remove(path.c_str());
}

// ST_EXEC_DIRECT: O_DIRECT reads through aligned bounce buffers give the same
// bytes as buffered reads, for whole tensors, unaligned pieces and slices.
TEST(Engine, DirectReadsMatchBufferedReads) {
  std::vector<Spec> specs = {{"a", {3}}, {"m", {300, 129}}, {"b", {1}}, {"big", {3u << 20}}, {"z", {5}}};
  std::string data;
  std::string bytes = build(specs, &data);
  std::string path = sttest::temp_path("engine_direct");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  st_open_options opts;
  st_open_options_init(&opts);
  opts.backend = ST_BACKEND_PREAD;
  st_file *f = nullptr;
  ASSERT_EQ(st_open(path.c_str(), &opts, &f, nullptr), ST_OK);
  std::vector<std::vector<char>> dst(st_tensor_count(f));
  st_plan *plan = nullptr;
  ASSERT_EQ(st_plan_new(f, nullptr, &plan, nullptr), ST_OK);
  for (size_t i = 0; i < st_tensor_count(f); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(f, i, &ti), ST_OK);
    dst[i].assign(ti.data_end - ti.data_begin, '\0');
    ASSERT_EQ(st_plan_add_tensor(plan, i, dst[i].data(), dst[i].size(), nullptr), ST_OK);
  }
  size_t mi = 0;
  ASSERT_EQ(st_tensor_find(f, "m", 1, &mi), ST_OK);
  st_range cols[2] = {{0, ST_SLICE_END, 1}, {7, 23, 1}};
  std::vector<char> got_slice(300 * 16 * 4), want_slice(300 * 16 * 4);
  ASSERT_EQ(st_plan_add_slice(plan, mi, cols, 2, got_slice.data(), got_slice.size(), nullptr), ST_OK);
  ASSERT_EQ(st_tensor_read_slice(f, mi, cols, 2, want_slice.data(), want_slice.size(), nullptr), ST_OK);
  st_exec_options eo;
  st_exec_options_init(&eo);
  eo.flags = ST_EXEC_DIRECT;
  eo.threads = 2;
  eo.chunk_size = 1 << 20;  // the big tensor crosses several bounce buffers
  st_exec_stats stats;
  st_error err;
  ASSERT_EQ(st_plan_execute(plan, &eo, &stats, &err), ST_OK) << err.message;
  for (size_t i = 0; i < st_tensor_count(f); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(f, i, &ti), ST_OK);
    EXPECT_EQ(0, std::memcmp(dst[i].data(), data.data() + ti.data_begin, dst[i].size())) << ti.name;
  }
  EXPECT_EQ(got_slice, want_slice);
  EXPECT_EQ(stats.bytes_copied, data.size() + got_slice.size());
  EXPECT_GE(stats.bytes_read, stats.bytes_copied);
  std::printf("[ info ] O_DIRECT %s: %llu bytes read for %llu copied\n",
              stats.direct ? "used" : "refused by the filesystem (buffered reads)",
              static_cast<unsigned long long>(stats.bytes_read),
              static_cast<unsigned long long>(stats.bytes_copied));
  // A file truncated underneath: a clean error, with or without O_DIRECT.
  ASSERT_EQ(truncate(path.c_str(), 4096), 0);
  EXPECT_EQ(st_plan_execute(plan, &eo, nullptr, &err), ST_ERR_FILE_CHANGED);
  st_plan_free(plan);
  st_close(f);
  std::remove(path.c_str());
}

TEST(Engine, HugePagesFlagGivesTheSameBytes) {
  std::vector<Spec> specs = {{"a", {3}}, {"big", {3u << 20}}, {"mid", {700000}}, {"z", {5}}};
  std::string data;
  std::string bytes = build(specs, &data);
  std::string path = sttest::temp_path("engine_huge");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  for (Kind kind : {Kind::kMmap, Kind::kPread}) {
    Opened o;
    open_kind(kind, path, bytes, &o);
    // Fresh anonymous memory, 2 MiB-aligned at an odd offset, as a big
    // torch.empty would be.
    const size_t total = data.size() + (8u << 20);
    void *raw = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(raw, MAP_FAILED);
    auto *dst = static_cast<unsigned char *>(raw) + 4096 + 64;
    st_plan *plan = nullptr;
    ASSERT_EQ(st_plan_new(o.f, nullptr, &plan, nullptr), ST_OK);
    size_t off = 0;
    for (size_t i = 0; i < st_tensor_count(o.f); i++) {
      st_tensor_info ti;
      ASSERT_EQ(st_tensor_get(o.f, i, &ti), ST_OK);
      ASSERT_EQ(st_plan_add_tensor(plan, i, dst + off, ti.data_end - ti.data_begin, nullptr), ST_OK);
      off += ti.data_end - ti.data_begin + 128;  // not contiguous: one entry each
    }
    st_exec_options eo;
    st_exec_options_init(&eo);
    eo.flags = ST_EXEC_HUGEPAGES;
    eo.threads = 2;
    eo.chunk_size = 1 << 20;  // chunk edges inside the big entry
    st_error err;
    ASSERT_EQ(st_plan_execute(plan, &eo, nullptr, &err), ST_OK) << err.message;
    off = 0;
    for (size_t i = 0; i < st_tensor_count(o.f); i++) {
      st_tensor_info ti;
      ASSERT_EQ(st_tensor_get(o.f, i, &ti), ST_OK);
      size_t n = ti.data_end - ti.data_begin;
      EXPECT_EQ(0, std::memcmp(dst + off, data.data() + ti.data_begin, n)) << ti.name;
      off += n + 128;
    }
    // Where the kernel offers huge pages on advice, the big entry got them.
    std::string mode;
    if (FILE *fp = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r")) {
      char buf[128] = {0};
      if (std::fgets(buf, sizeof buf, fp) != nullptr) mode = buf;
      std::fclose(fp);
    }
    long kb = sttest::smaps_kb(dst + (4u << 20), "AnonHugePages:");
    if (!mode.empty() && mode.back() == '\n') mode.pop_back();
    std::printf("[ info ] THP mode \"%s\": AnonHugePages of the destination: %ld kB\n",
                mode.c_str(), kb);
    if (mode.find("[never]") == std::string::npos && kb >= 0) {
      EXPECT_GT(kb, 0);
    }
    st_plan_free(plan);
    munmap(raw, total);
  }
  std::remove(path.c_str());
}

TEST(Engine, FailingAllocatorLeavesNothing) {
  std::string data;
  std::string bytes = build({{"a", {100}}, {"b", {200}}}, &data);
  st_file *f = nullptr;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, nullptr), ST_OK);
  std::vector<char> dst(1200);
  for (uint64_t k = 1;; k++) {
    sttest::FailingAllocator fa;
    fa.fail_at = k;
    st_plan *plan = nullptr;
    st_status s = st_plan_new(f, &fa.alloc, &plan, nullptr);
    if (s == ST_OK) s = st_plan_add_tensor(plan, 0, dst.data(), 400, nullptr);
    if (s == ST_OK) s = st_plan_add_range(plan, 500, 300, dst.data() + 700, nullptr);
    if (s == ST_OK) s = st_plan_execute(plan, nullptr, nullptr, nullptr);
    st_plan_free(plan);
    EXPECT_EQ(fa.live, 0) << "leak when failing allocation " << k;
    if (s == ST_OK) break;
    EXPECT_EQ(s, ST_ERR_NOMEM);
    ASSERT_LT(k, 100u);
  }
  st_close(f);
}

}  // namespace
