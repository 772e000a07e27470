// Hazards from outside the process: another process truncating a file we
// read (pread backend: ST_ERR_FILE_CHANGED; mmap backend: SIGBUS, shown in a
// forked child), a save over a file this process has mapped, and a writer
// killed with SIGKILL at every step of the save path.
//
// Documented behaviour (see docs/ROBUSTNESS_MAP.md):
//  - mmap backend + truncation by another process: touching a page past the
//    new end of file raises SIGBUS (the kernel's rule for shared file
//    mappings; MAP_PRIVATE pages not yet copied behave the same). The library
//    does not catch signals; callers reading files that may change use
//    ST_BACKEND_PREAD, which reports ST_ERR_FILE_CHANGED instead.
//  - kill -9 during a save: the target is always the complete old file or the
//    complete new file. The data is written to an anonymous O_TMPFILE file
//    that vanishes with the process; it gets a name (".<name>.<pid>.<random>
//    .tmp") only between its linkat and the rename, so only a kill at the
//    close or the rename can leave it. The next save of the same target
//    removes temp files whose writer no longer runs.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "io/io.h"
#include "safetensors.h"
#include "testutil.h"

namespace {

// One F32 tensor "w" of n floats whose bytes all equal fill, plus "b".
std::string model_bytes(size_t n, unsigned char fill) {
  st_writer *w = nullptr;
  EXPECT_EQ(st_writer_new(nullptr, &w, nullptr), ST_OK);
  std::string data(n * 4, static_cast<char>(fill));
  std::string small(8, static_cast<char>(fill ^ 0xFF));
  uint64_t shape[1] = {n};
  uint64_t shape2[1] = {2};
  EXPECT_EQ(st_writer_add_tensor(w, "w", 1, ST_F32, shape, 1, data.data(), data.size(), nullptr),
            ST_OK);
  EXPECT_EQ(st_writer_add_tensor(w, "b", 1, ST_F32, shape2, 1, small.data(), small.size(),
                                 nullptr),
            ST_OK);
  uint64_t size = 0;
  EXPECT_EQ(st_writer_size(w, &size, nullptr), ST_OK);
  std::string out(static_cast<size_t>(size), '\0');
  EXPECT_EQ(st_writer_write_memory(w, &out[0], out.size(), nullptr, nullptr), ST_OK);
  st_writer_free(w);
  return out;
}

using sttest::fresh_dir;
using sttest::list_dir;

void remove_dir(const std::string &dir) {
  for (const std::string &n : list_dir(dir)) std::remove((dir + "/" + n).c_str());
  rmdir(dir.c_str());
}

// Another process truncates path to size and exits.
void truncate_in_other_process(const std::string &path, off_t size) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(truncate(path.c_str(), size) == 0 ? 0 : 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// ---- truncation by another process ------------------------------------------

TEST(Hazards, PreadBackendReportsTruncationByAnotherProcess) {
  const size_t n = 256 * 1024;  // 1 MiB tensor
  std::string bytes = model_bytes(n, 0x11);
  std::string path = sttest::temp_path("hz_pread");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  st_open_options o;
  st_open_options_init(&o);
  o.backend = ST_BACKEND_PREAD;
  st_file *f = nullptr;
  ASSERT_EQ(st_open(path.c_str(), &o, &f, nullptr), ST_OK);
  size_t wi = 0;
  ASSERT_EQ(st_tensor_find(f, "w", 1, &wi), ST_OK);
  st_tensor_info ti;
  ASSERT_EQ(st_tensor_get(f, wi, &ti), ST_OK);
  std::vector<unsigned char> buf(n * 4);
  ASSERT_EQ(st_tensor_read(f, wi, buf.data(), buf.size(), nullptr), ST_OK);

  // Cut inside the tensor, then before the data section, then to zero.
  const off_t cuts[] = {static_cast<off_t>(st_data_offset(f) + ti.data_begin + 4096),
                        static_cast<off_t>(st_data_offset(f) - 1), 0};
  for (off_t cut : cuts) {
    truncate_in_other_process(path, cut);
    st_error err;
    EXPECT_EQ(st_tensor_read(f, wi, buf.data(), buf.size(), &err), ST_ERR_FILE_CHANGED) << cut;
    EXPECT_EQ(err.code, ST_ERR_FILE_CHANGED);
    st_range r[1] = {{1, ST_SLICE_END, 3}};
    EXPECT_EQ(st_tensor_read_slice(f, wi, r, 1, buf.data(), buf.size(), &err),
              ST_ERR_FILE_CHANGED);
    // The engine, with several threads, reports it too and never hangs.
    st_plan *plan = nullptr;
    ASSERT_EQ(st_plan_new(f, nullptr, &plan, nullptr), ST_OK);
    ASSERT_EQ(st_plan_add_tensor(plan, wi, buf.data(), buf.size(), nullptr), ST_OK);
    st_exec_options eo;
    st_exec_options_init(&eo);
    eo.threads = 4;
    eo.chunk_size = 64 * 1024;
    EXPECT_EQ(st_plan_execute(plan, &eo, nullptr, &err), ST_ERR_FILE_CHANGED);
    st_plan_free(plan);
  }
  st_close(f);
  std::remove(path.c_str());
}

TEST(Hazards, PreadBackendSeesGrowthHarmlessly) {
  std::string bytes = model_bytes(1024, 0x22);
  std::string path = sttest::temp_path("hz_grow");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  st_open_options o;
  st_open_options_init(&o);
  o.backend = ST_BACKEND_PREAD;
  st_file *f = nullptr;
  ASSERT_EQ(st_open(path.c_str(), &o, &f, nullptr), ST_OK);
  ASSERT_TRUE(sttest::write_bytes(path, bytes + std::string(4096, 'x')));
  std::vector<unsigned char> buf(4096);
  EXPECT_EQ(st_tensor_read(f, 0, buf.data(), buf.size(), nullptr), ST_OK);
  st_close(f);
  std::remove(path.c_str());
}

extern "C" void on_sigbus(int) { _exit(77); }

// mmap backend: documented SIGBUS, observed in a child so the test survives.
TEST(Hazards, MmapBackendTruncationRaisesSigbusInChild) {
  const size_t n = 1024 * 1024;  // 4 MiB tensor: many pages past the cut
  std::string bytes = model_bytes(n, 0x33);
  std::string path = sttest::temp_path("hz_mmap");
  ASSERT_TRUE(sttest::write_bytes(path, bytes));
  fflush(nullptr);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigaction(SIGBUS, &sa, nullptr);
    st_file *f = nullptr;
    if (st_open(path.c_str(), nullptr, &f, nullptr) != ST_OK) _exit(2);
    size_t wi = 0;
    if (st_tensor_find(f, "w", 1, &wi) != ST_OK) _exit(3);
    // Another process (a grandchild) truncates the file under the mapping.
    pid_t g = fork();
    if (g == 0) _exit(truncate(path.c_str(), 4096) == 0 ? 0 : 1);
    int gs = 0;
    if (waitpid(g, &gs, 0) != g || !WIFEXITED(gs) || WEXITSTATUS(gs) != 0) _exit(4);
    std::vector<unsigned char> buf(n * 4);
    st_tensor_read(f, wi, buf.data(), buf.size(), nullptr);
    _exit(0);  // not reached: the copy touches pages past the new end
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 77) << "expected SIGBUS in the child";
  std::remove(path.c_str());
}

// ---- saving over a mapped file ---------------------------------------------

TEST(Hazards, SaveOverFileMappedByThisProcess) {
  std::string dir = fresh_dir("hz_save");
  std::string path = dir + "/model.safetensors";
  const size_t n = 64 * 1024;
  ASSERT_TRUE(sttest::write_bytes(path, model_bytes(n, 0x44)));
  st_file *mm = nullptr, *pr = nullptr;
  ASSERT_EQ(st_open(path.c_str(), nullptr, &mm, nullptr), ST_OK);
  st_open_options o;
  st_open_options_init(&o);
  o.backend = ST_BACKEND_PREAD;
  ASSERT_EQ(st_open(path.c_str(), &o, &pr, nullptr), ST_OK);
  size_t wi = 0;
  ASSERT_EQ(st_tensor_find(mm, "w", 1, &wi), ST_OK);
  const void *view = nullptr;
  ASSERT_EQ(st_tensor_data(mm, wi, &view), ST_OK);

  // Save a different, larger file over the same path through the library.
  st_writer *w = nullptr;
  ASSERT_EQ(st_writer_new(nullptr, &w, nullptr), ST_OK);
  std::string data(3 * n * 4, '\x55');
  uint64_t shape[2] = {3, n};
  ASSERT_EQ(st_writer_add_tensor(w, "w", 1, ST_F32, shape, 2, data.data(), data.size(), nullptr),
            ST_OK);
  ASSERT_EQ(st_writer_write_path(w, path.c_str(), 0, nullptr), ST_OK);
  st_writer_free(w);

  // The old views and both old handles still see the old bytes.
  std::vector<unsigned char> expect(n * 4, 0x44), got(n * 4);
  EXPECT_EQ(memcmp(view, expect.data(), expect.size()), 0);
  ASSERT_EQ(st_tensor_read(pr, wi, got.data(), got.size(), nullptr), ST_OK);
  EXPECT_EQ(got, expect);
  st_plan *plan = nullptr;
  ASSERT_EQ(st_plan_new(mm, nullptr, &plan, nullptr), ST_OK);
  std::fill(got.begin(), got.end(), 0);
  ASSERT_EQ(st_plan_add_tensor(plan, wi, got.data(), got.size(), nullptr), ST_OK);
  ASSERT_EQ(st_plan_execute(plan, nullptr, nullptr, nullptr), ST_OK);
  EXPECT_EQ(got, expect);
  st_plan_free(plan);

  // The new file is complete and correct.
  st_file *nf = nullptr;
  ASSERT_EQ(st_open(path.c_str(), nullptr, &nf, nullptr), ST_OK);
  ASSERT_EQ(st_tensor_count(nf), 1u);
  st_tensor_info ti;
  ASSERT_EQ(st_tensor_get(nf, 0, &ti), ST_OK);
  EXPECT_EQ(ti.rank, 2u);
  const void *nv = nullptr;
  ASSERT_EQ(st_tensor_data(nf, 0, &nv), ST_OK);
  EXPECT_EQ(memcmp(nv, data.data(), data.size()), 0);
  st_close(nf);
  st_close(mm);
  st_close(pr);
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"model.safetensors"});
  remove_dir(dir);
}

// ---- kill -9 at every step of a save -----------------------------------------

// In the child: the k-th hooked system call or producer call (1-based) sends
// SIGKILL to the process before doing anything.
long g_kill_at = 0;
long g_calls = 0;

void maybe_die() {
  if (++g_calls == g_kill_at) kill(getpid(), SIGKILL);
}

int k_open(const char *p, int fl, mode_t m) { maybe_die(); return open(p, fl, m); }
ssize_t k_pwrite(int fd, const void *b, size_t l, off_t o) {
  maybe_die();
  // Half the bytes: every write is split, so a kill can land mid-file.
  return pwrite(fd, b, l > 1 ? l / 2 : l, o);
}
ssize_t k_write(int fd, const void *b, size_t l) { maybe_die(); return write(fd, b, l); }
int k_fsync(int fd) { maybe_die(); return fsync(fd); }
int k_close(int fd) { maybe_die(); return close(fd); }
int k_rename(const char *a, const char *b) { maybe_die(); return rename(a, b); }
int k_unlink(const char *p) { maybe_die(); return unlink(p); }
int k_link(int fd, const char *path) {
  maybe_die();
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
}
int k_fallocate(int fd, off_t off, off_t len) {
  maybe_die();
  return fallocate(fd, 0, off, len) == 0 ? 0 : errno;
}

int produce(void *ctx, uint64_t offset, void *dst, size_t len) {
  maybe_die();
  const std::string *d = static_cast<const std::string *>(ctx);
  memcpy(dst, d->data() + offset, len);
  return 0;
}

// Forks a writer that dies at call kill_at (0: never). Returns true when the
// child was killed, false when it finished the save.
bool save_in_child(const std::string &path, const std::string &data, long kill_at) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    g_kill_at = kill_at;
    st__io_hooks h = {k_open,   k_pwrite, k_write,     k_fsync, k_close,
                      k_rename, k_unlink, k_fallocate, k_link, nullptr};
    st__io_set_hooks(&h);
    st_writer *w = nullptr;
    if (st_writer_new(nullptr, &w, nullptr) != ST_OK) _exit(2);
    uint64_t shape[1] = {data.size() / 4};
    if (st_writer_add_tensor_cb(w, "w", 1, ST_F32, shape, 1, produce,
                                const_cast<std::string *>(&data), nullptr) != ST_OK)
      _exit(3);
    if (st_writer_add_metadata(w, "v", 1, "new", 3, nullptr) != ST_OK) _exit(4);
    st_status s = st_writer_write_path(w, path.c_str(), 0, nullptr);
    _exit(s == ST_OK ? 0 : 5);
  }
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status)) {
    EXPECT_EQ(WTERMSIG(status), SIGKILL);
    return true;
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  return false;
}

TEST(Hazards, KillDashNineAtEveryStepOfASave) {
  std::string dir = fresh_dir("hz_kill");
  std::string path = dir + "/model.safetensors";
  const std::string old_bytes = model_bytes(4096, 0x66);
  std::string data(256 * 1024, '\0');
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<char>(i * 7 + 3);

  // The new file, as a save that is not interrupted writes it.
  ASSERT_TRUE(sttest::write_bytes(path, old_bytes));
  ASSERT_FALSE(save_in_child(path, data, 0));
  const std::string new_bytes = sttest::read_bytes(path);
  ASSERT_NE(new_bytes, old_bytes);
  st_file *f = nullptr;
  ASSERT_EQ(st_open(path.c_str(), nullptr, &f, nullptr), ST_OK);
  st_close(f);

  int killed = 0, saw_old = 0, saw_new = 0;
  std::set<std::string> leftovers;
  for (long k = 1;; k++) {
    ASSERT_TRUE(sttest::write_bytes(path, old_bytes));
    bool died = save_in_child(path, data, k);
    std::string now = sttest::read_bytes(path);
    EXPECT_TRUE(now == old_bytes || now == new_bytes) << "kill at call " << k;
    saw_old += now == old_bytes;
    saw_new += now == new_bytes;
    for (const std::string &n : list_dir(dir)) {
      if (n == "model.safetensors") continue;
      // Only the writer's own temporary file may be left behind; the next
      // save sweeps it.
      EXPECT_EQ(n.rfind(".model.safetensors.", 0), 0u) << n;
      EXPECT_EQ(n.substr(n.size() - 4), ".tmp") << n;
      leftovers.insert(n);
    }
    if (!died) break;
    killed++;
    ASSERT_LT(k, 10000) << "the save never finished";
  }
  // The kill points cover the temp creation, the data writes, fsync, close,
  // rename and the directory fsync.
  EXPECT_GT(killed, 10);
  EXPECT_GT(saw_old, 0);
  EXPECT_GT(saw_new, 0);  // killed after the rename: the new file is there
  // O_TMPFILE: a named temp file exists only at the close and the rename
  // (a sweep's unlink shifts later kill points by one, so a third may show).
  EXPECT_LE(leftovers.size(), 4u);
  // The last (uninterrupted) save swept every leftover.
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"model.safetensors"});
  std::printf("[ info ] %d kill points: target old %d, new %d; temp file left %zu times\n",
              killed, saw_old, saw_new, leftovers.size());

  // Leftover temporaries do not disturb the next save.
  ASSERT_TRUE(sttest::write_bytes(path, old_bytes));
  ASSERT_TRUE(save_in_child(path, data, 3));
  ASSERT_FALSE(save_in_child(path, data, 0));
  EXPECT_EQ(sttest::read_bytes(path), new_bytes);
  remove_dir(dir);
}

// Kills at arbitrary moments with real timing: SIGKILL from the parent while
// the child loops over saves. Whatever the moment, old or new, complete.
TEST(Hazards, KillDashNineFromOutsideWhileSaving) {
  std::string dir = fresh_dir("hz_kill2");
  std::string path = dir + "/model.safetensors";
  const std::string a = model_bytes(64 * 1024, 0x77);
  const std::string b = model_bytes(96 * 1024, 0x78);
  ASSERT_TRUE(sttest::write_bytes(path, a));
  for (int round = 0; round < 12; round++) {
    fflush(nullptr);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (int i = 0;; i++) {
        const std::string &src = i % 2 ? a : b;
        st_file *f = nullptr;
        if (st_open_memory(src.data(), src.size(), nullptr, &f, nullptr) != ST_OK) _exit(2);
        st_writer *w = nullptr;
        if (st_writer_new(nullptr, &w, nullptr) != ST_OK) _exit(3);
        for (size_t t = 0; t < st_tensor_count(f); t++) {
          st_tensor_info ti;
          const void *p = nullptr;
          st_tensor_get(f, t, &ti);
          st_tensor_data(f, t, &p);
          st_writer_add_tensor(w, ti.name, ti.name_len, ti.dtype, ti.shape, ti.rank, p,
                               ti.data_end - ti.data_begin, nullptr);
        }
        if (st_writer_write_path(w, path.c_str(), ST_WRITE_NO_FSYNC, nullptr) != ST_OK) _exit(4);
        st_writer_free(w);
        st_close(f);
      }
    }
    usleep(static_cast<useconds_t>(2000 + round * 1500));
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child failed: " << status;
    std::string now = sttest::read_bytes(path);
    EXPECT_TRUE(now == a || now == b) << "round " << round;
    for (const std::string &n : list_dir(dir))
      if (n != "model.safetensors") std::remove((dir + "/" + n).c_str());
  }
  remove_dir(dir);
}

}  // namespace
