#include "cpp_testutil.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

namespace sttest {

std::string temp_path(const std::string &stem) {
  static std::atomic<int> counter{0};
  const char *dir = std::getenv("ST_TEST_TMPDIR");
  std::ostringstream s;
  s << (dir && *dir ? dir : "/tmp") << "/" << stem << "-" << getpid() << "-" << counter++
    << ".safetensors";
  return s.str();
}

void write_file(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char *>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::vector<uint8_t> read_file(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::vector<std::pair<uintptr_t, uintptr_t>> mappings_of(const std::string &path) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto pos = line.find(path);
    if (pos == std::string::npos) continue;
    // The name ends the line, possibly followed by " (deleted)".
    std::string rest = line.substr(pos + path.size());
    if (!rest.empty() && rest != " (deleted)") continue;
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2) out.emplace_back(lo, hi);
  }
  return out;
}

std::string fixtures_dir() {
  const char *dir = std::getenv("ST_CPP_FIXTURES");
  return dir ? dir : "";
}

std::vector<uint8_t> pattern(size_t n, unsigned seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>((i * 37 + seed) % 256);
  return out;
}

}  // namespace sttest
