#include "testutil.h"

#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <algorithm>
#include <vector>

#include <dirent.h>
#include <unistd.h>

namespace sttest {

std::string make_file_n(uint64_t n, const std::string &header,
                        const std::string &data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; i++) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string make_file(const std::string &header, const std::string &data) {
  return make_file_n(header.size(), header, data);
}

std::string temp_path(const std::string &stem) {
  static unsigned counter = 0;
  const char *dir = std::getenv("ST_TEST_TMPDIR");
  std::string base = dir != nullptr ? dir : "/tmp";
  return base + "/" + stem + "." + std::to_string(getpid()) + "." +
         std::to_string(counter++);
}

bool write_bytes(const std::string &path, const std::string &bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(f);
}

std::string fresh_dir(const std::string &stem) {
  std::string tmpl = temp_path(stem) + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) return "";
  return std::string(buf.data());
}

std::vector<std::string> list_dir(const std::string &dir) {
  std::vector<std::string> names;
  DIR *d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (struct dirent *e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_bytes(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A small header before each block records nothing but keeps alignment; the
// live counter is what tests check.
static void *fa_malloc(void *ctx, size_t size) {
  auto *fa = static_cast<FailingAllocator *>(ctx);
  fa->calls++;
  if (fa->fail_at != 0 && fa->calls == fa->fail_at) return nullptr;
  void *p = std::malloc(size);
  if (p != nullptr) fa->live++;
  return p;
}

static void *fa_realloc(void *ctx, void *ptr, size_t size) {
  auto *fa = static_cast<FailingAllocator *>(ctx);
  fa->calls++;
  if (fa->fail_at != 0 && fa->calls == fa->fail_at) return nullptr;
  void *p = std::realloc(ptr, size);
  if (p != nullptr && ptr == nullptr) fa->live++;
  return p;
}

static void fa_free(void *ctx, void *ptr) {
  auto *fa = static_cast<FailingAllocator *>(ctx);
  if (ptr != nullptr) fa->live--;
  std::free(ptr);
}

long smaps_kb(const void *addr, const char *field) {
  FILE *fp = std::fopen("/proc/self/smaps", "r");
  if (fp == nullptr) return -1;
  char line[512];
  bool inside = false;
  long kb = -1;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, fp) != nullptr) {
    unsigned long lo, hi;
    // A mapping's first line is "lo-hi perms ..."; its fields ("Rss:",
    // "AnonHugePages:") never parse as two hex numbers joined by '-'.
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      inside = a >= lo && a < hi;
    } else if (inside && std::strncmp(line, field, n) == 0) {
      kb = std::strtol(line + n, nullptr, 10);
      break;
    }
  }
  std::fclose(fp);
  return kb;
}

FailingAllocator::FailingAllocator() {
  alloc.malloc_fn = fa_malloc;
  alloc.realloc_fn = fa_realloc;
  alloc.free_fn = fa_free;
  alloc.ctx = this;
}

}  // namespace sttest
