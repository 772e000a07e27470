// Shared helpers for the GoogleTest suites: files built in code, temporary
// paths, and an allocator that fails on the n-th call.
#ifndef ST_TESTS_TESTUTIL_H
#define ST_TESTS_TESTUTIL_H

#include <cstdint>
#include <string>
#include <vector>

#include "safetensors.h"

namespace sttest {

// 8-byte little-endian N, then header, then data.
std::string make_file(const std::string &header, const std::string &data = "");
// Same, with N given explicitly (lets a test lie about the length).
std::string make_file_n(uint64_t n, const std::string &header,
                        const std::string &data = "");

// A fresh path in the test's temporary directory (not created).
std::string temp_path(const std::string &stem);
// Writes bytes to path; returns false on failure.
bool write_bytes(const std::string &path, const std::string &bytes);
// Reads a whole file; empty string when it cannot be read.
std::string read_bytes(const std::string &path);

// A new, empty directory under the test temp dir ("" when it cannot be made).
std::string fresh_dir(const std::string &stem = "dir");

// The names in dir, sorted, without "." and "..".
std::vector<std::string> list_dir(const std::string &dir);

// Kilobytes of one field ("Rss:", "Anonymous:", "AnonHugePages:") of the
// mapping of /proc/self/smaps that holds addr; -1 when not found.
long smaps_kb(const void *addr, const char *field);

// An st_allocator that fails the fail_at-th call (1-based; 0 = never) and
// counts live blocks, so a test can assert no leak after a failure.
struct FailingAllocator {
  st_allocator alloc;
  uint64_t calls = 0;
  uint64_t fail_at = 0;
  int64_t live = 0;
  FailingAllocator();
};

}  // namespace sttest

#endif
