// The tensor table's two orders (file order by (begin, end, name), name
// order byte-wise) for headers whose entries arrive in every arrangement:
// shuffled, already in name order, already in range order, and both.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "safetensors.h"
#include "testutil.h"

namespace {

struct Entry {
  std::string name;
  uint64_t begin, end;
};

enum class Arrangement { kShuffled, kByName, kByRange, kBoth };

std::string header_of(const std::vector<Entry> &entries) {
  std::string h = "{";
  for (size_t i = 0; i < entries.size(); i++) {
    if (i > 0) h += ",";
    h += "\"" + entries[i].name + "\":{\"dtype\":\"U8\",\"shape\":[" +
         std::to_string(entries[i].end - entries[i].begin) + "],\"data_offsets\":[" +
         std::to_string(entries[i].begin) + "," + std::to_string(entries[i].end) + "]}";
  }
  return h + "}";
}

class TableOrder : public ::testing::TestWithParam<std::tuple<Arrangement, int>> {};

TEST_P(TableOrder, BothOrdersAndLookup) {
  auto [arrangement, n] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(n) * 7 + static_cast<unsigned>(arrangement));
  std::vector<Entry> entries;
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    // Zero-size tensors share offsets with their neighbours on purpose.
    uint64_t len = rng() % 3 == 0 ? 0 : 1 + rng() % 5;
    std::string name = "t" + std::to_string(rng() % 100000) + "_" + std::to_string(i);
    if (arrangement == Arrangement::kBoth) name = "n" + std::string(8 - std::to_string(i).size(), '0') + std::to_string(i);
    entries.push_back({name, off, off + len});
    off += len;
  }
  auto by_range = [](const Entry &a, const Entry &b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  };
  auto by_name = [](const Entry &a, const Entry &b) { return a.name < b.name; };
  std::vector<Entry> header = entries;
  switch (arrangement) {
    case Arrangement::kShuffled: std::shuffle(header.begin(), header.end(), rng); break;
    case Arrangement::kByName: std::sort(header.begin(), header.end(), by_name); break;
    case Arrangement::kByRange:
    case Arrangement::kBoth: std::sort(header.begin(), header.end(), by_range); break;
  }
  std::string bytes = sttest::make_file(header_of(header), std::string(off, '\x01'));
  st_file *f = nullptr;
  st_error err;
  ASSERT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, &err), ST_OK) << err.message;
  ASSERT_EQ(st_tensor_count(f), entries.size());

  std::vector<Entry> want_file = entries, want_name = entries;
  std::sort(want_file.begin(), want_file.end(), by_range);
  std::sort(want_name.begin(), want_name.end(), by_name);
  for (size_t i = 0; i < want_file.size(); i++) {
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(f, i, &ti), ST_OK);
    EXPECT_EQ(std::string(ti.name, ti.name_len), want_file[i].name) << "file order " << i;
    EXPECT_EQ(ti.data_begin, want_file[i].begin);
    size_t found = SIZE_MAX;
    ASSERT_EQ(st_tensor_find(f, ti.name, ti.name_len, &found), ST_OK);
    EXPECT_EQ(found, i);
  }
  for (size_t k = 0; k < want_name.size(); k++) {
    size_t idx = SIZE_MAX;
    ASSERT_EQ(st_tensor_name_order(f, k, &idx), ST_OK);
    st_tensor_info ti;
    ASSERT_EQ(st_tensor_get(f, idx, &ti), ST_OK);
    EXPECT_EQ(std::string(ti.name, ti.name_len), want_name[k].name) << "name order " << k;
  }
  st_close(f);
}

INSTANTIATE_TEST_SUITE_P(
    Arrangements, TableOrder,
    ::testing::Combine(::testing::Values(Arrangement::kShuffled, Arrangement::kByName,
                                         Arrangement::kByRange, Arrangement::kBoth),
                       ::testing::Values(1, 2, 17, 1000)));

TEST(TableOrder, DuplicateFoundInEveryArrangement) {
  // The duplicate is reported at the later of the two spellings.
  std::string h = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}";
  std::string bytes = sttest::make_file(h, "xy");
  st_file *f = nullptr;
  st_error err;
  EXPECT_EQ(st_open_memory(bytes.data(), bytes.size(), nullptr, &f, &err), ST_ERR_DUPLICATE_KEY);
  EXPECT_EQ(err.offset, 8 + h.rfind("\"b\""));
  EXPECT_STREQ(err.name, "b");
}

}  // namespace
