// cpp_testutil.h -- internal helpers of the C++ adapter's tests.
#ifndef ST_CPP_TESTUTIL_H
#define ST_CPP_TESTUTIL_H

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sttest {

// A fresh path under $ST_TEST_TMPDIR (or /tmp), unique per call.
std::string temp_path(const std::string &stem);
// Writes bytes to path.
void write_file(const std::string &path, const std::vector<uint8_t> &bytes);
std::vector<uint8_t> read_file(const std::string &path);
// Address ranges of this process's mappings of path (from /proc/self/maps).
std::vector<std::pair<uintptr_t, uintptr_t>> mappings_of(const std::string &path);
// The directory the Python fixture wrote ($ST_CPP_FIXTURES), or "".
std::string fixtures_dir();
// The deterministic byte pattern the fixtures use: byte i = (i*37 + seed) % 256.
std::vector<uint8_t> pattern(size_t n, unsigned seed);

}  // namespace sttest

#endif
