// Concurrency: one handle read from many threads at once (every backend),
// many handles opened and closed at once, saves running while other threads
// load the same path, writers writing at the same time, and engine plans
// executed concurrently. Run under
// ThreadSanitizer by `make test-tsan`; every thread checks the bytes it got.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "safetensors.h"
#include "testutil.h"

namespace {

const int kThreads = 8;

struct Model {
  std::string bytes;
  std::vector<std::string> names;
  std::vector<std::string> data;  // per tensor, in names order
};

// Tensors "t<i>" of varied dtypes and shapes, data from seed.
Model make_model(int ntensors, unsigned seed, size_t scale = 1) {
  Model m;
  std::mt19937 rng(seed);
  st_writer *w = nullptr;
  EXPECT_EQ(st_writer_new(nullptr, &w, nullptr), ST_OK);
  const st_dtype dts[] = {ST_F32, ST_U8, ST_I16, ST_F64, ST_BF16};
  m.names.resize(static_cast<size_t>(ntensors));
  m.data.resize(static_cast<size_t>(ntensors));
  for (size_t i = 0; i < m.names.size(); i++) {
    st_dtype dt = dts[i % 5];
    uint64_t shape[3] = {static_cast<uint64_t>(1 + rng() % 7),
                         static_cast<uint64_t>(1 + rng() % 13),
                         static_cast<uint64_t>(scale * (1 + rng() % 50))};
    std::string &d = m.data[i];
    d.assign(static_cast<size_t>(shape[0] * shape[1] * shape[2] * st_dtype_bits(dt) / 8), '\0');
    for (auto &c : d) c = static_cast<char>(rng());
    m.names[i] = "t" + std::to_string(i);
    // The writer borrows the bytes until the write: m.data is not resized again.
    EXPECT_EQ(st_writer_add_tensor(w, m.names[i].data(), m.names[i].size(), dt, shape, 3,
                                   d.data(), d.size(), nullptr),
              ST_OK);
  }
  std::string meta = "seed " + std::to_string(seed);
  EXPECT_EQ(st_writer_add_metadata(w, "seed", 4, meta.data(), meta.size(), nullptr), ST_OK);
  uint64_t size = 0;
  EXPECT_EQ(st_writer_size(w, &size, nullptr), ST_OK);
  m.bytes.assign(static_cast<size_t>(size), '\0');
  EXPECT_EQ(st_writer_write_memory(w, &m.bytes[0], m.bytes.size(), nullptr, nullptr), ST_OK);
  st_writer_free(w);
  return m;
}

// Reads every tensor every way from one thread; returns the number of
// mismatches (0 expected).
int read_everything(const st_file *f, const Model &m, unsigned seed) {
  int bad = 0;
  std::mt19937 rng(seed);
  std::vector<unsigned char> buf;
  for (int round = 0; round < 3; round++) {
    for (size_t k = 0; k < m.names.size(); k++) {
      size_t i = static_cast<size_t>(rng() % m.names.size());
      size_t idx = 0;
      if (st_tensor_find(f, m.names[i].data(), m.names[i].size(), &idx) != ST_OK) {
        bad++;
        continue;
      }
      st_tensor_info ti;
      if (st_tensor_get(f, idx, &ti) != ST_OK) bad++;
      const std::string &want = m.data[i];
      buf.assign(want.size(), 0);
      if (st_tensor_read(f, idx, buf.data(), buf.size(), nullptr) != ST_OK ||
          memcmp(buf.data(), want.data(), want.size()) != 0)
        bad++;
      // A slice along dim 0 (whole rows): compare with the matching bytes.
      int64_t a = static_cast<int64_t>(rng() % ti.shape[0]);
      st_range r[1] = {{a, a + 1, 1}};
      size_t row = want.size() / ti.shape[0];
      buf.assign(row, 0);
      if (st_tensor_read_slice(f, idx, r, 1, buf.data(), buf.size(), nullptr) != ST_OK ||
          memcmp(buf.data(), want.data() + static_cast<size_t>(a) * row, row) != 0)
        bad++;
      const char *v = nullptr;
      size_t vl = 0;
      if (st_metadata_find(f, "seed", 4, &v, &vl) != ST_OK) bad++;
    }
  }
  return bad;
}

std::string write_temp(const std::string &stem, const std::string &bytes) {
  std::string p = sttest::temp_path(stem);
  EXPECT_TRUE(sttest::write_bytes(p, bytes));
  return p;
}

// ---- one handle, many threads ---------------------------------------------------

class OneHandle : public ::testing::TestWithParam<int> {};

TEST_P(OneHandle, ManyThreadsReadEverything) {
  Model m = make_model(40, 7);
  std::string path = write_temp("cc_one", m.bytes);
  st_file *f = nullptr;
  int kind = GetParam();
  if (kind == 2) {
    ASSERT_EQ(st_open_memory(m.bytes.data(), m.bytes.size(), nullptr, &f, nullptr), ST_OK);
  } else {
    st_open_options o;
    st_open_options_init(&o);
    o.backend = kind == 0 ? ST_BACKEND_MMAP : ST_BACKEND_PREAD;
    ASSERT_EQ(st_open(path.c_str(), &o, &f, nullptr), ST_OK);
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++)
    ts.emplace_back([&, t] { bad += read_everything(f, m, static_cast<unsigned>(t)); });
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  st_close(f);
  std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Backends, OneHandle, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int> &i) {
                           return std::string(i.param == 0 ? "mmap"
                                              : i.param == 1 ? "pread" : "memory");
                         });

// ---- many handles at once --------------------------------------------------------

TEST(Concurrency, ManyHandlesOpenedAndClosedAtOnce) {
  std::vector<Model> models;
  std::vector<std::string> paths;
  for (int i = 0; i < 4; i++) {
    models.push_back(make_model(12, 100 + static_cast<unsigned>(i)));
    paths.push_back(write_temp("cc_many", models.back().bytes));
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&, t] {
      for (int it = 0; it < 12; it++) {
        size_t k = static_cast<size_t>((t + it) % 4);
        st_open_options o;
        st_open_options_init(&o);
        o.backend = it % 2 ? ST_BACKEND_PREAD : ST_BACKEND_MMAP;
        st_file *f = nullptr;
        if (st_open(paths[k].c_str(), &o, &f, nullptr) != ST_OK) {
          bad++;
          continue;
        }
        bad += read_everything(f, models[k], static_cast<unsigned>(t * 100 + it));
        st_close(f);
      }
    });
  }
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  for (auto &p : paths) std::remove(p.c_str());
}

// ---- saves while loads run -------------------------------------------------------

TEST(Concurrency, SavesWhileLoadsRun) {
  Model a = make_model(10, 201), b = make_model(14, 202);
  std::string dir = sttest::temp_path("cc_save");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  std::string shared = dir + "/shared.safetensors";
  ASSERT_TRUE(sttest::write_bytes(shared, a.bytes));
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, loads{0}, saves{0};

  // Writers: two threads replace the shared file again and again with one of
  // two versions; two more save their own files.
  auto saver = [&](int id, const std::string &path) {
    int it = 0;
    while (!stop.load() || it < 4) {
      const Model &m = (id + it) % 2 ? a : b;
      st_file *src = nullptr;
      if (st_open_memory(m.bytes.data(), m.bytes.size(), nullptr, &src, nullptr) != ST_OK) {
        bad++;
        return;
      }
      st_writer *w = nullptr;
      st_writer_new(nullptr, &w, nullptr);
      for (size_t t = 0; t < st_tensor_count(src); t++) {
        st_tensor_info ti;
        const void *p = nullptr;
        st_tensor_get(src, t, &ti);
        st_tensor_data(src, t, &p);
        if (st_writer_add_tensor(w, ti.name, ti.name_len, ti.dtype, ti.shape, ti.rank, p,
                                 ti.data_end - ti.data_begin, nullptr) != ST_OK)
          bad++;
      }
      const char *v;
      size_t vl;
      st_metadata_find(src, "seed", 4, &v, &vl);
      st_writer_add_metadata(w, "seed", 4, v, vl, nullptr);
      if (st_writer_write_path(w, path.c_str(), ST_WRITE_NO_FSYNC, nullptr) != ST_OK) bad++;
      st_writer_free(w);
      st_close(src);
      saves++;
      it++;
    }
  };
  // Loaders: open the shared path; every open sees one complete version.
  auto loader = [&](int id) {
    for (int it = 0; it < 40; it++) {
      st_open_options o;
      st_open_options_init(&o);
      o.backend = (id + it) % 2 ? ST_BACKEND_PREAD : ST_BACKEND_MMAP;
      st_file *f = nullptr;
      if (st_open(shared.c_str(), &o, &f, nullptr) != ST_OK) {
        bad++;
        continue;
      }
      const Model &m = st_tensor_count(f) == a.names.size() ? a : b;
      bad += read_everything(f, m, static_cast<unsigned>(it));
      st_close(f);
      loads++;
    }
  };
  std::vector<std::thread> ts;
  ts.emplace_back(saver, 0, shared);
  ts.emplace_back(saver, 1, shared);
  ts.emplace_back(saver, 0, dir + "/own0.safetensors");
  ts.emplace_back(saver, 1, dir + "/own1.safetensors");
  std::vector<std::thread> ls;
  for (int t = 0; t < 4; t++) ls.emplace_back(loader, t);
  for (auto &t : ls) t.join();
  stop = true;
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(loads.load(), 160);
  EXPECT_GE(saves.load(), 16);
  for (const char *n : {"/shared.safetensors", "/own0.safetensors", "/own1.safetensors"})
    std::remove((dir + n).c_str());
  EXPECT_EQ(rmdir(dir.c_str()), 0) << "a temporary file was left behind";
}

// A meeting point inside the writes: every writer's producer, on its first
// call, waits there until all kThreads writers are inside a write, so the
// writes provably overlap (a wait that times out fails the test instead of
// hanging it).
struct Rendezvous {
  std::mutex mu;
  std::condition_variable cv;
  int inside = 0;
  int most = 0;
  bool timed_out = false;
};

struct Producer {
  Rendezvous *meet = nullptr;  // nullptr: produce without waiting
  const std::string *bytes = nullptr;
  bool waited = false;
};

int produce(void *ctx, uint64_t off, void *dst, size_t len) {
  Producer *p = static_cast<Producer *>(ctx);
  if (p->meet != nullptr && !p->waited) {
    p->waited = true;
    Rendezvous &r = *p->meet;
    std::unique_lock<std::mutex> lock(r.mu);
    r.inside++;
    if (r.inside > r.most) r.most = r.inside;
    r.cv.notify_all();
    if (!r.cv.wait_for(lock, std::chrono::seconds(60), [&] { return r.inside >= kThreads; }))
      r.timed_out = true;
  }
  std::memcpy(dst, p->bytes->data() + off, len);
  return 0;
}

// Writers are independent objects: kThreads of them write at the same time,
// all inside their writes at once (the rendezvous above), to memory, to a
// path and to a descriptor, and every file comes out byte for byte as the
// same writer writes it alone.
TEST(Concurrency, ManyWritersAtOnce) {
  const std::string dir = sttest::fresh_dir("writers");
  ASSERT_FALSE(dir.empty());
  Rendezvous meet[3];
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&, t] {
      Model m = make_model(6, static_cast<unsigned>(1000 + t));
      std::string produced(4096 + static_cast<size_t>(t), '\0');
      for (size_t i = 0; i < produced.size(); i++) produced[i] = static_cast<char>(i * 7 + static_cast<size_t>(t));
      st_writer *w = nullptr;
      if (st_writer_new(nullptr, &w, nullptr) != ST_OK) {
        bad++;
        return;
      }
      for (size_t i = 0; i < m.names.size(); i++) {
        st_file *f = nullptr;
        st_tensor_info ti;
        size_t idx;
        if (st_open_memory(m.bytes.data(), m.bytes.size(), nullptr, &f, nullptr) != ST_OK ||
            st_tensor_find(f, m.names[i].data(), m.names[i].size(), &idx) != ST_OK ||
            st_tensor_get(f, idx, &ti) != ST_OK ||
            st_writer_add_tensor(w, ti.name, ti.name_len, ti.dtype, ti.shape, ti.rank,
                                 m.data[i].data(), m.data[i].size(), nullptr) != ST_OK)
          bad++;
        st_close(f);
      }
      Producer prod;
      prod.bytes = &produced;
      uint64_t shape[1] = {produced.size()};
      if (st_writer_add_tensor_cb(w, "cb", 2, ST_U8, shape, 1, produce, &prod, nullptr) != ST_OK)
        bad++;
      // Alone (no rendezvous): the bytes every concurrent write must equal.
      uint64_t size = 0;
      if (st_writer_size(w, &size, nullptr) != ST_OK) bad++;
      std::string want(static_cast<size_t>(size), '\0');
      if (st_writer_write_memory(w, &want[0], want.size(), nullptr, nullptr) != ST_OK) bad++;

      const std::string path = dir + "/w" + std::to_string(t) + ".safetensors";
      for (int round = 0; round < 3; round++) {
        prod.meet = &meet[round];
        prod.waited = false;
        std::string got;
        if (round == 0) {
          got.assign(want.size(), '\0');
          if (st_writer_write_memory(w, &got[0], got.size(), nullptr, nullptr) != ST_OK) bad++;
        } else if (round == 1) {
          if (st_writer_write_path(w, path.c_str(), ST_WRITE_NO_FSYNC, nullptr) != ST_OK) bad++;
          got = sttest::read_bytes(path);
        } else {
          const std::string fd_path = path + ".fd";
          int fd = open(fd_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
          if (fd < 0 || st_writer_write_fd(w, fd, nullptr) != ST_OK) bad++;
          if (fd >= 0) close(fd);
          got = sttest::read_bytes(fd_path);
        }
        if (got != want) bad++;
      }
      st_writer_free(w);
    });
  }
  for (auto &t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  for (Rendezvous &r : meet) {
    EXPECT_FALSE(r.timed_out);
    EXPECT_EQ(r.most, kThreads);  // every writer was inside its write at once
  }
}

// ---- engine plans from many threads ------------------------------------------------

TEST(Concurrency, EnginePlansExecutedConcurrentlyOnOneHandle) {
  Model m = make_model(30, 301, 40);
  std::string path = write_temp("cc_plan", m.bytes);
  for (int kind = 0; kind < 2; kind++) {
    st_open_options o;
    st_open_options_init(&o);
    o.backend = kind == 0 ? ST_BACKEND_MMAP : ST_BACKEND_PREAD;
    st_file *f = nullptr;
    ASSERT_EQ(st_open(path.c_str(), &o, &f, nullptr), ST_OK);
    std::atomic<int> bad{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++) {
      ts.emplace_back([&, t] {
        std::vector<std::string> out(m.names.size());
        st_plan *plan = nullptr;
        if (st_plan_new(f, nullptr, &plan, nullptr) != ST_OK) {
          bad++;
          return;
        }
        for (size_t i = 0; i < m.names.size(); i++) {
          size_t idx;
          st_tensor_find(f, m.names[i].data(), m.names[i].size(), &idx);
          out[i].assign(m.data[i].size(), '\0');
          if (st_plan_add_tensor(plan, idx, &out[i][0], out[i].size(), nullptr) != ST_OK) bad++;
        }
        st_exec_options eo;
        st_exec_options_init(&eo);
        eo.threads = static_cast<uint32_t>(1 + t);
        eo.chunk_size = 4096u << t;
        for (int rep = 0; rep < 3; rep++) {
          st_exec_stats stats;
          if (st_plan_execute(plan, &eo, &stats, nullptr) != ST_OK) bad++;
          for (size_t i = 0; i < m.names.size(); i++)
            if (out[i] != m.data[i]) bad++;
        }
        st_plan_free(plan);
      });
    }
    for (auto &t : ts) t.join();
    EXPECT_EQ(bad.load(), 0) << "backend " << kind;
    st_close(f);
  }
  std::remove(path.c_str());
}

}  // namespace
