// The save path's O_DIRECT option (ST_WRITE_DIRECT) and its gathered
// positioned writes: the same bytes whatever the mode, O_DIRECT really used
// where the filesystem takes it, buffered fallbacks, and a fault at every
// write leaving the old file and no temp file behind.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "io/io.h"
#include "safetensors.h"
#include "testutil.h"

namespace {

// The library's bounce buffer (ST_DIRECT_BUF); sizes around it straddle a
// buffer boundary. Another value only weakens the coverage, not the checks.
constexpr size_t kBounce = size_t{2} << 20;
// The writer's scratch buffer for producer tensors (ST_WRITER_SCRATCH): a
// producer is called for chunks of at most this.
constexpr size_t kScratch = size_t{4} << 20;
constexpr size_t kBlock = 4096;
// The writer's gathering limit (ST_WRITER_BATCH_BYTES).
constexpr size_t kBatch = size_t{8} << 20;

using sttest::fresh_dir;
using sttest::list_dir;

// True when fd is open with O_DIRECT right now, as the kernel says.
bool fd_is_direct(int fd) {
  char p[64];
  std::snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
  FILE *f = std::fopen(p, "r");
  if (f == nullptr) return false;
  char line[256];
  unsigned long flags = 0;
  bool found = false;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "flags: %lo", &flags) == 1) {
      found = true;
      break;
    }
  }
  std::fclose(f);
  return found && (flags & O_DIRECT) != 0;
}

// Whether this directory's filesystem takes O_DIRECT at all (tmpfs may not).
bool dir_takes_direct(const std::string &dir) {
  std::string p = dir + "/probe";
  int fd = open(p.c_str(), O_CREAT | O_WRONLY | O_DIRECT, 0600);
  unlink(p.c_str());
  if (fd < 0) return false;
  close(fd);
  return true;
}

// Threads of this process right now.
int thread_count() {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  while (struct dirent *e = readdir(d)) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(d);
  return n;
}

// ---- hooks ------------------------------------------------------------------
// The save's writer thread calls pwrite: the plain fields of g are only
// touched by one thread at a time (the library hands buffers over under a
// mutex and joins the thread before returning); the hold handshake below
// is between the writer thread and a producer on the caller's thread.

struct WriteRec {
  bool direct;
  size_t len;
  uint64_t off;
  uintptr_t mem;
  bool on_caller;  // issued from the thread that called the save
};

struct HookState {
  int opens = 0, opens_direct = 0;
  int pwrites = 0, pwritevs = 0, fsyncs = 0;
  std::vector<WriteRec> writes;  // every pwrite, as the kernel saw the fd
  // Faults: fail the fail_at-th call of pwrite (or pwritev) with fail_errno.
  size_t max_gathered = 0;  // bytes of the largest pwritev of several pieces
  int fail_pwrite_at = 0, fail_pwritev_at = 0, fail_errno = 0;
  // EINVAL for every pwrite while the descriptor is direct, from this call on.
  int einval_direct_from = 0;
  bool refuse_direct_open = false;   // open with O_DIRECT: EINVAL
  bool create_then_refuse = false;   // ... after creating the file, like Linux
  bool no_tmpfile = false;           // O_TMPFILE: EOPNOTSUPP
  bool short_pwritev = false;        // pwritev moves few bytes, sometimes EINTR
  // Writes from another thread than the caller's set g_in_write, then wait
  // for g_release; a failing producer waits for g_in_write, then sets
  // g_release: the failure happens while the thread is inside a write.
  bool hold_thread_writes = false;
  int thread_creates = 0, fail_thread_create = 0;  // errno for every create
} g;

std::atomic<bool> g_release{false}, g_hold_timed_out{false}, g_in_write{false};

// Waits up to 10 s for flag; false on timeout.
bool wait_for(const std::atomic<bool> &flag) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!flag.load()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}
std::thread::id g_caller;  // the test's thread, which calls the saves

size_t writes_off_caller() {
  size_t n = 0;
  for (const WriteRec &r : g.writes) n += r.on_caller ? 0 : 1;
  return n;
}

int h_open(const char *p, int f, mode_t m) {
  g.opens++;
  if ((f & O_TMPFILE) == O_TMPFILE && g.no_tmpfile) {
    errno = EOPNOTSUPP;
    return -1;
  }
  if ((f & O_DIRECT) != 0) {
    g.opens_direct++;
    if (g.refuse_direct_open) {
      if (g.create_then_refuse && (f & O_CREAT) != 0) {
        int fd = open(p, f & ~O_DIRECT, m);
        if (fd >= 0) close(fd);
      }
      errno = EINVAL;
      return -1;
    }
  }
  return open(p, f, m);
}

ssize_t h_pwrite(int fd, const void *b, size_t n, off_t o) {
  int c = ++g.pwrites;
  bool direct = fd_is_direct(fd);
  bool on_caller = std::this_thread::get_id() == g_caller;
  g.writes.push_back(
      {direct, n, static_cast<uint64_t>(o), reinterpret_cast<uintptr_t>(b), on_caller});
  if (g.hold_thread_writes && !on_caller) {
    g_in_write = true;
    if (!wait_for(g_release)) g_hold_timed_out = true;
  }
  if (c == g.fail_pwrite_at) {
    errno = g.fail_errno;
    return -1;
  }
  if (g.einval_direct_from != 0 && c >= g.einval_direct_from && direct) {
    errno = EINVAL;
    return -1;
  }
  return pwrite(fd, b, n, o);
}

ssize_t h_pwritev(int fd, const struct iovec *iov, int n, off_t o) {
  int c = ++g.pwritevs;
  if (n > 1) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    g.max_gathered = std::max(g.max_gathered, total);
  }
  if (c == g.fail_pwritev_at) {
    errno = g.fail_errno;
    return -1;
  }
  if (g.short_pwritev) {
    if (c % 3 == 0) {
      errno = EINTR;
      return -1;
    }
    // At most 1000 + c bytes, cut inside a piece: the caller must resume
    // in the middle of the iovec array.
    size_t limit = 1000 + static_cast<size_t>(c), total = 0;
    std::vector<struct iovec> cut;
    for (int i = 0; i < n && total < limit; i++) {
      struct iovec v = iov[i];
      v.iov_len = std::min(v.iov_len, limit - total);
      total += v.iov_len;
      cut.push_back(v);
    }
    return pwritev(fd, cut.data(), static_cast<int>(cut.size()), o);
  }
  return pwritev(fd, iov, n, o);
}

int h_fsync(int fd) {
  g.fsyncs++;
  return fsync(fd);
}

int h_thread_create(pthread_t *t, const pthread_attr_t *a, void *(*start)(void *), void *arg) {
  g.thread_creates++;
  if (g.fail_thread_create != 0) return g.fail_thread_create;
  return pthread_create(t, a, start, arg);
}

st__io_hooks hooks_table() {
  st__io_hooks h = {};
  h.open_fn = h_open;
  h.pwrite_fn = h_pwrite;
  h.pwritev_fn = h_pwritev;
  h.fsync_fn = h_fsync;
  return h;
}

// ---- models -------------------------------------------------------------------

struct Spec {
  std::string name;
  size_t bytes;
  bool producer;
};

struct Source {
  const std::string *bytes;
  int calls = 0;
  int fail_on_call = 0;  // 1-based; 0 = never
};

int produce(void *ctx, uint64_t offset, void *dst, size_t len) {
  Source *s = static_cast<Source *>(ctx);
  if (++s->calls == s->fail_on_call) {
    if (g.hold_thread_writes && !wait_for(g_in_write)) g_hold_timed_out = true;
    g_release = true;
    return -1;
  }
  std::memcpy(dst, s->bytes->data() + offset, len);
  return 0;
}

struct WriterFree {
  void operator()(st_writer *w) const { st_writer_free(w); }
};

// A writer over U8 tensors with deterministic bytes; owns the data.
struct Model {
  std::unique_ptr<st_writer, WriterFree> w;
  std::vector<std::unique_ptr<std::string>> data;
  std::vector<std::unique_ptr<Source>> sources;
};

std::unique_ptr<Model> build(const std::vector<Spec> &specs,
                             const std::vector<std::pair<std::string, std::string>> &meta = {},
                             bool declare_meta = false) {
  auto m = std::make_unique<Model>();
  st_writer *w = nullptr;
  if (st_writer_new(nullptr, &w, nullptr) != ST_OK) return nullptr;
  m->w.reset(w);
  uint32_t seed = 12345;
  for (const Spec &s : specs) {
    auto d = std::make_unique<std::string>(s.bytes, '\0');
    for (size_t i = 0; i < s.bytes; i++) {
      seed = seed * 1103515245u + 12345u;
      (*d)[i] = static_cast<char>(seed >> 16);
    }
    uint64_t shape[1] = {s.bytes};
    st_status st;
    if (s.producer) {
      auto src = std::make_unique<Source>();
      src->bytes = d.get();
      st = st_writer_add_tensor_cb(w, s.name.data(), s.name.size(), ST_U8, shape, 1, produce,
                                   src.get(), nullptr);
      m->sources.push_back(std::move(src));
    } else {
      st = st_writer_add_tensor(w, s.name.data(), s.name.size(), ST_U8, shape, 1, d->data(),
                                d->size(), nullptr);
    }
    if (st != ST_OK) return nullptr;
    m->data.push_back(std::move(d));
  }
  for (const auto &kv : meta) {
    if (st_writer_add_metadata(w, kv.first.data(), kv.first.size(), kv.second.data(),
                               kv.second.size(), nullptr) != ST_OK)
      return nullptr;
  }
  if (declare_meta && st_writer_declare_metadata(w, nullptr) != ST_OK) return nullptr;
  return m;
}

std::string to_memory(st_writer *w) {
  uint64_t size = 0;
  if (st_writer_size(w, &size, nullptr) != ST_OK) return "";
  std::string out(static_cast<size_t>(size), '\0');
  size_t written = 0;
  if (st_writer_write_memory(w, &out[0], out.size(), &written, nullptr) != ST_OK) return "";
  out.resize(written);
  return out;
}

struct Case {
  const char *label;
  std::vector<Spec> specs;
  std::vector<std::pair<std::string, std::string>> meta;
  bool declare;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"empty", {}, {}, false});
  c.push_back({"metadata declared, empty", {}, {}, true});
  c.push_back({"metadata only", {}, {{"format", "pt"}, {"k", std::string(5000, 'v')}}, false});
  c.push_back({"zero-size tensors", {{"a", 0, false}, {"b", 0, true}, {"c", 0, false}}, {}, false});
  c.push_back({"one byte", {{"x", 1, false}}, {}, false});
  c.push_back({"one byte, produced", {{"x", 1, true}}, {}, false});
  for (size_t n : {kBlock - 1, kBlock, kBlock + 1, kBounce - 1, kBounce, kBounce + 1}) {
    c.push_back({"single size", {{"t", n, false}}, {}, false});
  }
  c.push_back({"3 buffers + 17", {{"big", 3 * kBounce + 17, false}}, {}, false});
  c.push_back({"straddling sizes",
               {{"a", kBlock - 1, false},
                {"b", kBlock, false},
                {"c", kBlock + 1, false},
                {"d", kBounce - 1, false},
                {"e", kBounce, false},
                {"f", kBounce + 1, false},
                {"g", 0, false}},
               {{"m", "v"}},
               false});
  c.push_back({"producers mixed with pointers",
               {{"p0", 5, true},
                {"q0", kBlock + 3, false},
                {"p1", kBounce + 5, true},  // several scratch chunks
                {"q1", 17, false},
                {"p2", kBlock, true},
                {"q2", kBounce - 9, false},
                {"z", 0, true}},
               {},
               false});
  return c;
}

class DirectSave : public ::testing::Test {
 protected:
  void SetUp() override {
    g = HookState();
    g_caller = std::this_thread::get_id();
    g_release = false;
    g_hold_timed_out = false;
    g_in_write = false;
    st__io_hooks h = hooks_table();
    st__io_set_hooks(&h);
    st__io_set_thread_hook(h_thread_create);
    dir = fresh_dir();
    ASSERT_FALSE(dir.empty());
    path = dir + "/target.safetensors";
    old = "the old file, which must survive";
    ASSERT_TRUE(sttest::write_bytes(path, old));
  }
  void TearDown() override { st__io_set_hooks(nullptr); }
  void expect_old_intact(const std::string &label) {
    EXPECT_EQ(sttest::read_bytes(path), old) << label;
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"}) << label;
  }
  std::string dir, path, old;
};

// ---- bytes --------------------------------------------------------------------

TEST_F(DirectSave, SameBytesInEveryMode) {
  const uint32_t modes[] = {0, ST_WRITE_DIRECT, ST_WRITE_DIRECT | ST_WRITE_NO_FSYNC,
                            ST_WRITE_NO_FSYNC};
  for (const Case &c : cases()) {
    auto m = build(c.specs, c.meta, c.declare);
    ASSERT_NE(m, nullptr) << c.label;
    const std::string expect = to_memory(m->w.get());
    ASSERT_FALSE(expect.empty()) << c.label;
    for (uint32_t flags : modes) {
      g = HookState();
      st_error err;
      ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), flags, &err), ST_OK)
          << c.label << " flags " << flags << ": " << err.message;
      std::string got = sttest::read_bytes(path);
      EXPECT_EQ(got.size(), expect.size()) << c.label << " flags " << flags;
      EXPECT_TRUE(got == expect) << c.label << " flags " << flags;
      EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"}) << c.label;
      if (flags & ST_WRITE_DIRECT) {
        EXPECT_GE(g.opens_direct, 1) << c.label;
        EXPECT_EQ(g.pwritevs, 0) << c.label;  // bounce buffers only
      } else {
        EXPECT_EQ(g.opens_direct, 0) << c.label;
        EXPECT_EQ(g.pwrites, 0) << c.label;  // gathered writes only
      }
      EXPECT_EQ(g.fsyncs, (flags & ST_WRITE_NO_FSYNC) ? 0 : 2) << c.label;
    }
  }
}

TEST_F(DirectSave, WriteFdAndMemoryAgree) {
  auto m = build(cases().back().specs);
  ASSERT_NE(m, nullptr);
  std::string expect = to_memory(m->w.get());
  std::string fpath = dir + "/fd.bin";
  int fd = open(fpath.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(st_writer_write_fd(m->w.get(), fd, nullptr), ST_OK);
  close(fd);
  EXPECT_TRUE(sttest::read_bytes(fpath) == expect);
}

// 10,000 small tensors: a handful of gathered writes, not 10,000.
TEST_F(DirectSave, TenThousandSmallTensorsAreGathered) {
  std::vector<Spec> specs;
  for (int i = 0; i < 10000; i++) {
    char name[16];
    std::snprintf(name, sizeof name, "t%05d", i);
    specs.push_back({name, static_cast<size_t>(1 + i % 97), false});
  }
  auto m = build(specs);
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), 0, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
  EXPECT_GE(g.pwritevs, 1);
  EXPECT_LE(g.pwritevs, 12);  // 10,001 pieces, at most 1024 per call
  EXPECT_EQ(g.pwrites, 0);

  g = HookState();
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
  EXPECT_LE(g.pwrites, 3);  // under one bounce buffer: the blocks, the tail
}

// Gathering stops at a few MiB: big tensors go out on their own, small
// ones around them are gathered, and no call grows past the batch limit.
TEST_F(DirectSave, GatheredWritesAreBounded) {
  std::vector<Spec> specs;
  for (int i = 0; i < 40; i++) {
    size_t n = i % 4 == 0 ? (size_t{3} << 20) + 5 : 1000 + static_cast<size_t>(i);
    specs.push_back({"a" + std::to_string(i), n, false});
  }
  specs.push_back({"Huge", kBatch * 3, false});  // sorts first
  auto m = build(specs);
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_NO_FSYNC, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == to_memory(m->w.get()));
  EXPECT_GT(g.max_gathered, 0u);
  EXPECT_LE(g.max_gathered, kBatch);
  EXPECT_GE(g.pwritevs, 4);  // 30 MiB of tensors, in calls of at most 8 MiB (or one tensor)
}

// Short gathered writes (cut mid-piece) and EINTR: the writer resumes at the
// right piece and byte.
TEST_F(DirectSave, ShortGatheredWritesResume) {
  std::vector<Spec> specs;
  for (int i = 0; i < 300; i++) {
    specs.push_back({"s" + std::to_string(i), static_cast<size_t>(i * 7 % 301), i % 50 == 0});
  }
  auto m = build(specs, {{"k", "v"}});
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  g.short_pwritev = true;
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), 0, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
  EXPECT_GT(g.pwritevs, static_cast<int>(expect.size() / 1400));
}

// ---- O_DIRECT really used -------------------------------------------------------

TEST_F(DirectSave, ODirectIsUsedWhereTheFilesystemTakesIt) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = build({{"a", 3 * kBounce + 17, false}, {"b", 100, true}});
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
  ASSERT_GE(g.writes.size(), 2u);
  uint64_t covered = 0;
  for (size_t i = 0; i < g.writes.size(); i++) {
    const WriteRec &r = g.writes[i];
    EXPECT_EQ(r.off, covered) << i;  // in order, no gaps, no overlap
    covered += r.len;
    if (i + 1 < g.writes.size()) {
      // Every write but the tail: O_DIRECT, aligned memory, offset, length.
      EXPECT_TRUE(r.direct) << i;
      EXPECT_EQ(r.off % kBlock, 0u) << i;
      EXPECT_EQ(r.len % kBlock, 0u) << i;
      EXPECT_EQ(r.mem % kBlock, 0u) << i;
    }
  }
  EXPECT_EQ(covered, expect.size());
  const WriteRec &tail = g.writes.back();
  if (expect.size() % kBlock != 0) {
    EXPECT_FALSE(tail.direct);  // the partial block goes out buffered
    EXPECT_LT(tail.len, kBlock);
  }

  // A file that is a whole number of blocks needs no buffered tail.
  // The header grows with the digits of the size: settle on a fixed point.
  uint64_t size = 0;
  size_t n = 2 * kBlock;
  for (int i = 0; i < 8; i++) {
    m = build({{"x", n, false}});
    ASSERT_NE(m, nullptr);
    ASSERT_EQ(st_writer_size(m->w.get(), &size, nullptr), ST_OK);
    if (size == 3 * kBlock) break;
    n = n + 3 * kBlock - static_cast<size_t>(size);
  }
  ASSERT_EQ(size % kBlock, 0u);
  g = HookState();
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == to_memory(m->w.get()));
  for (const WriteRec &r : g.writes) EXPECT_TRUE(r.direct);
}

// ---- fallbacks ------------------------------------------------------------------

TEST_F(DirectSave, OpenRefusingODirectFallsBackToBuffered) {
  auto m = build(cases().back().specs, {{"k", "v"}});
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  for (bool no_tmpfile : {false, true}) {
    for (bool create_first : {false, true}) {
      g = HookState();
      g.refuse_direct_open = true;
      g.create_then_refuse = create_first;
      g.no_tmpfile = no_tmpfile;
      std::string label = std::string(no_tmpfile ? "named" : "tmpfile") +
                          (create_first ? ", created before EINVAL" : "");
      ASSERT_TRUE(sttest::write_bytes(path, old));
      ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK)
          << label;
      EXPECT_TRUE(sttest::read_bytes(path) == expect) << label;
      EXPECT_GE(g.opens_direct, 1) << label;
      EXPECT_GE(g.pwritevs, 1) << label;  // the buffered, gathered path
      for (const WriteRec &r : g.writes) EXPECT_FALSE(r.direct) << label;
      EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"}) << label;
    }
  }
}

TEST_F(DirectSave, DirectWriteEinvalMidwayFallsBackToBuffered) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = build({{"a", 2 * kBounce + 5, false}, {"p", kBounce / 2 + 3, true}});
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  for (int from : {1, 2, 3}) {
    g = HookState();
    g.einval_direct_from = from;
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK)
        << from;
    EXPECT_TRUE(sttest::read_bytes(path) == expect) << from;
    // Direct up to the refusal, buffered from then on.
    size_t first_buffered = g.writes.size();
    for (size_t i = 0; i < g.writes.size(); i++) {
      if (!g.writes[i].direct) {
        first_buffered = i;
        break;
      }
    }
    EXPECT_EQ(first_buffered, static_cast<size_t>(from)) << from;
    for (size_t i = first_buffered; i < g.writes.size(); i++) EXPECT_FALSE(g.writes[i].direct);
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"});
  }
}

// ---- faults ---------------------------------------------------------------------

// Fails the k-th write call for every k of a clean save; each failure is
// ST_ERR_IO with the errno, the old file intact and no temp file; the same
// writer succeeds afterwards.
TEST_F(DirectSave, EveryWriteFailing) {
  struct Row {
    const char *label;
    std::vector<Spec> specs;
    uint32_t flags;
    bool vectored;  // count pwritev calls (buffered) or pwrite (direct)
  };
  std::vector<Spec> many;
  for (int i = 0; i < 3000; i++) many.push_back({"m" + std::to_string(i), 100, i % 1000 == 7});
  std::vector<Spec> mixed = {{"a", kBounce + 100, false}, {"p", kBounce / 2, true},
                             {"b", 3 * kBlock + 1, false}, {"q", 9, true}};
  const Row rows[] = {
      {"buffered, many tensors", many, 0, true},
      {"buffered, mixed", mixed, 0, true},
      {"direct, mixed", mixed, ST_WRITE_DIRECT, false},
      {"direct no fsync, many", many, ST_WRITE_DIRECT | ST_WRITE_NO_FSYNC, false},
  };
  for (const Row &r : rows) {
    auto m = build(r.specs, {{"k", "v"}});
    ASSERT_NE(m, nullptr);
    const std::string expect = to_memory(m->w.get());
    g = HookState();
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), r.flags, nullptr), ST_OK) << r.label;
    const int total = r.vectored ? g.pwritevs : g.pwrites;
    ASSERT_GE(total, 2) << r.label;
    for (int k = 1; k <= total; k++) {
      const int errs[] = {ENOSPC, EIO, EFBIG};
      const int e = errs[k % 3];
      const std::string label = std::string(r.label) + " k=" + std::to_string(k);
      ASSERT_TRUE(sttest::write_bytes(path, old));
      g = HookState();
      if (r.vectored) {
        g.fail_pwritev_at = k;
      } else {
        g.fail_pwrite_at = k;
      }
      g.fail_errno = e;
      st_error err;
      EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), r.flags, &err), ST_ERR_IO) << label;
      EXPECT_EQ(err.code, ST_ERR_IO) << label;
      EXPECT_EQ(err.sys_errno, e) << label;
      EXPECT_LT(err.offset, expect.size()) << label;
      expect_old_intact(label);
    }
    g = HookState();
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), r.flags, nullptr), ST_OK) << r.label;
    EXPECT_TRUE(sttest::read_bytes(path) == expect) << r.label;
    ASSERT_TRUE(sttest::write_bytes(path, old));
  }
}

// A failed write names the tensor whose bytes it carried.
TEST_F(DirectSave, FailedWriteNamesItsTensor) {
  auto m = build({{"a", 100, false}, {"b", kBounce * 2, false}, {"c", 10, false}});
  ASSERT_NE(m, nullptr);
  g.fail_pwrite_at = 2;  // the second bounce buffer: inside "b"
  g.fail_errno = EIO;
  st_error err;
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, &err), ST_ERR_IO);
  EXPECT_STREQ(err.name, "b");
  EXPECT_EQ(err.offset, kBounce);
  expect_old_intact("direct, second block");

  g = HookState();
  g.fail_pwritev_at = 1;  // header and "a" gathered: the header's offset
  g.fail_errno = EIO;
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), 0, &err), ST_ERR_IO);
  EXPECT_EQ(err.offset, 0u);
  EXPECT_STREQ(err.name, "");
  expect_old_intact("buffered, first batch");
}

TEST_F(DirectSave, ProducerFailureIsCallbackError) {
  for (int fail_on : {1, 2, 3}) {
    auto m = build({{"a", kBlock + 1, false}, {"lazy", 9u << 20, true}, {"z", 3, false}});
    ASSERT_NE(m, nullptr);
    m->sources[0]->fail_on_call = fail_on;  // three scratch chunks
    for (uint32_t flags : {0u, static_cast<uint32_t>(ST_WRITE_DIRECT)}) {
      m->sources[0]->calls = 0;
      st_error err;
      EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), flags, &err), ST_ERR_CALLBACK);
      EXPECT_EQ(err.code, ST_ERR_CALLBACK);
      EXPECT_STREQ(err.name, "lazy");
      EXPECT_EQ(m->sources[0]->calls, fail_on);
      expect_old_intact("producer " + std::to_string(fail_on) + " flags " + std::to_string(flags));
    }
  }
}

TEST_F(DirectSave, AllocationFailuresAreClean) {
  auto m0 = build(cases().back().specs);
  ASSERT_NE(m0, nullptr);
  const std::string expect = to_memory(m0->w.get());
  for (uint64_t k = 1;; k++) {
    sttest::FailingAllocator fa;
    st_writer *w = nullptr;
    ASSERT_EQ(st_writer_new(&fa.alloc, &w, nullptr), ST_OK);
    std::unique_ptr<st_writer, WriterFree> wp(w);
    for (size_t i = 0; i < m0->data.size(); i++) {
      uint64_t shape[1] = {m0->data[i]->size()};
      std::string name = "t" + std::to_string(i);
      ASSERT_EQ(st_writer_add_tensor(w, name.data(), name.size(), ST_U8, shape, 1,
                                     m0->data[i]->data(), m0->data[i]->size(), nullptr),
                ST_OK);
    }
    fa.fail_at = fa.calls + k;
    st_error err;
    st_status s = st_writer_write_path(w, path.c_str(), ST_WRITE_DIRECT, &err);
    wp.reset();
    EXPECT_EQ(fa.live, 0) << k;
    if (s == ST_OK) break;
    EXPECT_EQ(s, ST_ERR_NOMEM) << k;
    expect_old_intact("alloc " + std::to_string(k));
    ASSERT_LT(k, 100u);
  }
}

TEST_F(DirectSave, Flags) {
  auto m = build({{"a", 10, false}});
  ASSERT_NE(m, nullptr);
  st_error err;
  EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), 0x4u, &err), ST_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ~0u, &err), ST_ERR_INVALID_ARGUMENT);
  expect_old_intact("unknown flags");
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT | ST_WRITE_NO_FSYNC,
                                 nullptr),
            ST_OK);
  EXPECT_EQ(g.fsyncs, 0);
  EXPECT_TRUE(sttest::read_bytes(path) == to_memory(m->w.get()));
}

// A hook table that hooks pwrite only (written before pwritev existed) sees
// every gathered write as pwrite calls.
TEST_F(DirectSave, PwriteOnlyHookTableSeesGatheredWrites) {
  st__io_hooks h = hooks_table();
  h.pwritev_fn = nullptr;
  st__io_set_hooks(&h);
  std::vector<Spec> specs;
  for (int i = 0; i < 50; i++) specs.push_back({"x" + std::to_string(i), 10, false});
  auto m = build(specs);
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), 0, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == to_memory(m->w.get()));
  EXPECT_EQ(g.pwrites, 51);  // the header, then each tensor
  EXPECT_EQ(g.pwritevs, 0);
}

// ---- the writer thread ----------------------------------------------------------

// Grows or shrinks the last tensor until the file is exactly size bytes (the
// header's digits move with it: a few rounds settle).
std::unique_ptr<Model> build_sized(std::vector<Spec> specs, uint64_t size) {
  for (int i = 0; i < 8; i++) {
    auto m = build(specs);
    if (m == nullptr) return nullptr;
    uint64_t got = 0;
    if (st_writer_size(m->w.get(), &got, nullptr) != ST_OK) return nullptr;
    if (got == size) return m;
    if (got > size && got - size > specs.back().bytes) return nullptr;
    specs.back().bytes = static_cast<size_t>(specs.back().bytes + size - got);
  }
  return nullptr;
}

// Five full bounce buffers and a 123-byte tail, pointers and producers mixed,
// tensors straddling the buffer boundaries.
std::unique_ptr<Model> five_buffers() {
  return build_sized({{"a", kBounce / 2 + 11, true},
                      {"b", 2 * kBounce + 7, false},
                      {"c", kBlock + 1, true},
                      {"d", kBounce - 3, false},
                      {"e", 1, true},
                      {"f", 3 * kBlock, false},
                      {"g", kBounce * 3 / 2 - 65536, true},
                      {"h", 1000, false}},
                     5 * kBounce + 123);
}

TEST_F(DirectSave, FullBuffersAreWrittenByTheWriterThread) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = five_buffers();
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  ASSERT_EQ(expect.size(), 5 * kBounce + 123);
  const int threads_before = thread_count();
  for (uint32_t flags : {static_cast<uint32_t>(ST_WRITE_DIRECT),
                         static_cast<uint32_t>(ST_WRITE_DIRECT | ST_WRITE_NO_FSYNC)}) {
    g = HookState();
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), flags, nullptr), ST_OK) << flags;
    EXPECT_TRUE(sttest::read_bytes(path) == expect) << flags;
    EXPECT_EQ(g.thread_creates, 1) << flags;
    EXPECT_EQ(thread_count(), threads_before) << flags;  // joined
    ASSERT_EQ(g.writes.size(), 6u) << flags;
    uint64_t covered = 0;
    for (size_t i = 0; i < 5; i++) {
      const WriteRec &r = g.writes[i];
      EXPECT_FALSE(r.on_caller) << i;
      EXPECT_TRUE(r.direct) << i;
      EXPECT_EQ(r.off, covered) << i;
      EXPECT_EQ(r.len, kBounce) << i;
      EXPECT_EQ(r.mem % kBlock, 0u) << i;
      covered += r.len;
    }
    // The two buffers take turns.
    EXPECT_NE(g.writes[0].mem, g.writes[1].mem);
    EXPECT_EQ(g.writes[0].mem, g.writes[2].mem);
    EXPECT_EQ(g.writes[1].mem, g.writes[3].mem);
    const WriteRec &tail = g.writes[5];
    EXPECT_TRUE(tail.on_caller);
    EXPECT_FALSE(tail.direct);
    EXPECT_EQ(tail.off, covered);
    EXPECT_EQ(tail.len, 123u);
  }
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"});
}

// A file that fits one buffer gets no thread; one byte more does.
TEST_F(DirectSave, SmallFilesStartNoThread) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  for (uint64_t size : {uint64_t{200}, uint64_t{kBounce - kBlock - 1}, uint64_t{kBounce},
                        uint64_t{kBounce + 1}, uint64_t{2 * kBounce}}) {
    auto m = build_sized({{"p", 50, true}, {"x", 10, false}}, size);
    ASSERT_NE(m, nullptr) << size;
    g = HookState();
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK)
        << size;
    EXPECT_TRUE(sttest::read_bytes(path) == to_memory(m->w.get())) << size;
    if (size <= kBounce) {
      EXPECT_EQ(g.thread_creates, 0) << size;
      EXPECT_EQ(writes_off_caller(), 0u) << size;
    } else {
      EXPECT_EQ(g.thread_creates, 1) << size;
    }
  }
}

// The k-th write fails, for every k, while the writer thread runs: the
// error, its errno and the offset of the failed write reach the caller, no
// write follows it, the thread is joined, and nothing of the save remains.
TEST_F(DirectSave, WriterThreadFailureAtEveryWrite) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = five_buffers();
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  const int threads_before = thread_count();
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  const size_t total = g.writes.size();
  ASSERT_EQ(total, 6u);
  for (size_t k = 1; k <= total; k++) {
    const int errs[] = {ENOSPC, EIO, EFBIG};
    const int e = errs[k % 3];
    const std::string label = "k=" + std::to_string(k);
    ASSERT_TRUE(sttest::write_bytes(path, old));
    g = HookState();
    g.fail_pwrite_at = static_cast<int>(k);
    g.fail_errno = e;
    st_error err;
    EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, &err), ST_ERR_IO)
        << label;
    EXPECT_EQ(err.sys_errno, e) << label;
    ASSERT_EQ(g.writes.size(), k) << label;  // the thread stopped at the failure
    EXPECT_EQ(err.offset, g.writes[k - 1].off) << label;
    EXPECT_EQ(err.offset, (k - 1) * kBounce) << label;
    EXPECT_EQ(g.writes[k - 1].on_caller, k == total) << label;
    EXPECT_EQ(thread_count(), threads_before) << label;
    expect_old_intact(label);
  }
  g = HookState();
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
}

// A producer fails while the thread is inside a write (held there until the
// failure): ST_ERR_CALLBACK, the thread joined, the buffers freed (ASan),
// nothing left behind.
TEST_F(DirectSave, ProducerFailsWhileTheThreadWrites) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  const int threads_before = thread_count();
  for (int fail_on : {1, 2, 3}) {
    // "a" fills the first buffer; "p" comes in scratch chunks of at most
    // 4 MiB, the first one before the second buffer is full: the failing
    // producer of call 1 waits until the thread is inside its first write.
    auto m = build({{"a", kBounce + 100, false}, {"p", 3 * kScratch, true}, {"z", 10, false}});
    ASSERT_NE(m, nullptr);
    m->sources[0]->fail_on_call = fail_on;
    const std::string label = "fail on " + std::to_string(fail_on);
    g = HookState();
    g.hold_thread_writes = fail_on == 1;
    g_release = false;
    g_hold_timed_out = false;
    g_in_write = false;
    st_error err;
    EXPECT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, &err),
              ST_ERR_CALLBACK)
        << label;
    EXPECT_STREQ(err.name, "p") << label;
    EXPECT_EQ(m->sources[0]->calls, fail_on) << label;
    EXPECT_FALSE(g_hold_timed_out.load()) << label;
    EXPECT_EQ(g.thread_creates, 1) << label;
    EXPECT_GE(writes_off_caller(), 1u) << label;
    if (fail_on == 1) {
      EXPECT_EQ(g.writes.size(), 1u) << label;
    }
    EXPECT_EQ(thread_count(), threads_before) << label;
    expect_old_intact(label);
  }
}

// EINVAL from a direct write on the writer thread: O_DIRECT is dropped
// there, that buffer rewritten buffered, and the rest buffered too.
TEST_F(DirectSave, EinvalOnTheWriterThreadFallsBackToBuffered) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = five_buffers();
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  for (int from : {1, 2, 3, 5}) {
    const std::string label = "from " + std::to_string(from);
    g = HookState();
    g.einval_direct_from = from;
    ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK)
        << label;
    EXPECT_TRUE(sttest::read_bytes(path) == expect) << label;
    ASSERT_EQ(g.writes.size(), 7u) << label;  // six, one of them twice
    const size_t refused = static_cast<size_t>(from) - 1;
    for (size_t i = 0; i < g.writes.size(); i++) EXPECT_EQ(g.writes[i].direct, i <= refused) << i;
    EXPECT_FALSE(g.writes[refused].on_caller) << label;
    EXPECT_EQ(g.writes[refused + 1].off, g.writes[refused].off) << label;  // the rewrite
    EXPECT_EQ(g.writes[refused + 1].len, kBounce) << label;
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"target.safetensors"}) << label;
  }
}

// No thread to be had: the caller writes every buffer itself, same bytes.
TEST_F(DirectSave, ThreadCreationFailureWritesSynchronously) {
  if (!dir_takes_direct(dir)) GTEST_SKIP() << "this filesystem refuses O_DIRECT";
  auto m = five_buffers();
  ASSERT_NE(m, nullptr);
  const std::string expect = to_memory(m->w.get());
  g.fail_thread_create = EAGAIN;
  ASSERT_EQ(st_writer_write_path(m->w.get(), path.c_str(), ST_WRITE_DIRECT, nullptr), ST_OK);
  EXPECT_TRUE(sttest::read_bytes(path) == expect);
  EXPECT_EQ(g.thread_creates, 1);  // tried once, not at every buffer
  EXPECT_EQ(writes_off_caller(), 0u);
  EXPECT_GE(g.writes.size(), 6u);
}

}  // namespace
