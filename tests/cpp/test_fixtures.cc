// The fixture files both bindings' tests load (tests/data/make_fixtures.py):
// the view policy (tests/data/views) and the structure record
// (tests/data/records), each checked against its expected.json.
#include <safetensors/torch.hpp>

#include <c10/core/ScalarType.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <set>

#include "cpp_testutil.h"
#include "json.hpp"

namespace st = safetensors;
using safetensors::detail::Json;

namespace {

// A fixture directory of tests/data ($ST_TEST_DATA) and its expected.json.
struct Expected {
  explicit Expected(const std::string &sub)
      : dir(std::string(std::getenv("ST_TEST_DATA") ? std::getenv("ST_TEST_DATA") : "") + "/" +
            sub + "/"),
        text(read(dir + "expected.json")),
        doc(text, 1024) {}  // the summaries of deep records nest deeply
  static std::string read(const std::string &path) {
    auto bytes = sttest::read_file(path);
    return std::string(bytes.begin(), bytes.end());
  }
  // The member name of the top-level object, or npos.
  size_t section(const char *name) const { return doc.ok() ? doc.find(0, name) : Json::npos; }
  // (path of the file, token of its expected entry) for each file that
  // section name lists; the files lie in dir/sub.
  std::vector<std::pair<std::string, size_t>> entries(const char *name, const char *sub) const {
    std::vector<std::pair<std::string, size_t>> out;
    size_t k = section(name);
    if (k == Json::npos) return out;
    for (size_t f : doc.children(k)) out.emplace_back(dir + sub + doc.string(f), f + 1);
    return out;
  }

  std::string dir;
  std::string text;
  Json doc;
};

std::string hex_of(const at::Tensor &t) {
  at::Tensor c = t.contiguous();
  auto p = static_cast<const uint8_t *>(c.const_data_ptr());
  std::string out;
  char buf[3];
  for (size_t i = 0; i < c.nbytes(); ++i) {
    std::snprintf(buf, sizeof buf, "%02x", p[i]);
    out += buf;
  }
  return out;
}

// A string or an integer element of an expected.json path, as a name part.
std::string part(const Json &doc, size_t k) {
  return doc.is_string(k) ? doc.string(k) : std::string(doc.raw(k));
}

std::string joined(const Json &doc, size_t path) {
  std::string out;
  for (size_t c : doc.children(path)) out += (out.empty() ? "" : ".") + part(doc, c);
  return out;
}

std::vector<std::string> strings(const Json &doc, size_t array) {
  std::vector<std::string> out;
  for (size_t c : doc.children(array)) out.push_back(doc.string(c));
  return out;
}

bool inside_mapping(const at::Tensor &t, const std::string &path) {
  auto p = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  for (auto [lo, hi] : sttest::mappings_of(path))
    if (p >= lo && p + t.nbytes() <= hi) return true;
  return false;
}

}  // namespace

TEST(Fixtures, ViewPolicy) {
  Expected ex("views");
  const Json &doc = ex.doc;
  auto files = ex.entries("files", "");
  ASSERT_GE(files.size(), 5u) << ex.dir;
  size_t checked = 0;
  for (const auto &[path, fe] : files) {
    for (int mode = 0; mode < 3; ++mode) {  // mmap views, mmap copy, pread
      st::LoadOptions opts;
      opts.backend = mode == 2 ? st::Backend::pread : st::Backend::mmap;
      opts.copy = mode == 1;
      st::File file(path, opts.backend);
      st::TensorDict all = file.tensors(opts);
      size_t tensors = doc.find(fe, "tensors");
      ASSERT_NE(tensors, Json::npos);
      EXPECT_EQ(all.size(), doc.size(tensors)) << path;
      for (size_t tk : doc.children(tensors)) {
        std::string name = doc.string(tk);
        size_t e = tk + 1;
        std::string where = path + " " + name + " mode " + std::to_string(mode);
        for (const at::Tensor &t : {all.at(name), file.tensor(name, opts)}) {
          EXPECT_EQ(c10::toString(t.scalar_type()), doc.string(doc.find(e, "c10_dtype"))) << where;
          std::vector<int64_t> shape;
          for (size_t d : doc.children(doc.find(e, "torch_shape")))
            shape.push_back(std::stoll(std::string(doc.raw(d))));
          EXPECT_EQ(t.sizes().vec(), shape) << where;
          EXPECT_EQ(std::to_string(t.nbytes()), doc.raw(doc.find(e, "nbytes"))) << where;
          EXPECT_EQ(hex_of(t), doc.string(doc.find(e, "hex"))) << where;
          EXPECT_EQ(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % t.element_size(), 0u)
              << where;
          bool zero_copy = doc.is_literal(doc.find(e, "zero_copy"), "true");
          EXPECT_EQ(inside_mapping(t, path), mode == 0 && zero_copy) << where;
        }
        // The C core's answer that the adapter follows.
        size_t index;
        ASSERT_EQ(st_tensor_find(file.c_handle(), name.data(), name.size(), &index), ST_OK);
        st_torch_view v;
        ASSERT_EQ(st_tensor_torch_view(file.c_handle(), index, &v), ST_OK);
        EXPECT_EQ(std::string(v.torch_name), doc.string(doc.find(e, "torch_dtype"))) << where;
        std::set<std::string> flags;
        if (v.flags & ST_VIEW_PACKED) flags.insert("PACKED");
        if (v.flags & ST_VIEW_FLAT) flags.insert("FLAT");
        // pread: the file offset decides, as the page-aligned mapping does.
        if (v.flags & ST_VIEW_COPY) flags.insert("COPY");
        auto expected = strings(doc, doc.find(e, "flags"));
        EXPECT_EQ(flags, std::set<std::string>(expected.begin(), expected.end())) << where;
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 3u * 20u);
}

TEST(Fixtures, ValidRecords) {
  Expected ex("records");
  const Json &doc = ex.doc;
  auto files = ex.entries("valid", "valid/");
  ASSERT_GE(files.size(), 5u) << ex.dir;
  for (const auto &[path, e] : files) {
    for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
      st::File file(path, backend);
      std::map<std::string, std::string> aliases;
      size_t ak = doc.find(e, "aliases");
      for (size_t k : doc.children(ak)) aliases[doc.string(k)] = doc.string(k + 1);
      EXPECT_EQ(file.aliases(), aliases) << path;

      auto names = file.names();
      auto stored = strings(doc, doc.find(e, "stored"));
      EXPECT_EQ(std::set<std::string>(names.begin(), names.end()),
                std::set<std::string>(stored.begin(), stored.end()))
          << path;

      st::LoadOptions opts;
      opts.backend = backend;
      st::TensorDict all = file.tensors(opts);
      EXPECT_EQ(all.size(), stored.size() + aliases.size()) << path;
      for (size_t pair : doc.children(doc.find(e, "shared"))) {
        auto ends = doc.children(pair);
        ASSERT_EQ(ends.size(), 2u);
        std::string a = joined(doc, ends[0]), b = joined(doc, ends[1]);
        ASSERT_TRUE(all.contains(a) && all.contains(b)) << path << ": " << a << ", " << b;
        EXPECT_EQ(all.at(a).storage().data(), all.at(b).storage().data()) << path;
        EXPECT_TRUE(all.at(a).is_alias_of(all.at(b))) << path;
      }
    }
  }
}

TEST(Fixtures, InvalidRecordsAreRefused) {
  Expected ex("records");
  const Json &doc = ex.doc;
  auto files = ex.entries("invalid", "invalid/");
  ASSERT_GE(files.size(), 20u) << ex.dir;
  for (const auto &[path, e] : files) {
    std::string status = doc.string(doc.find(e, "status"));
    std::string message = doc.string(doc.find(e, "message"));
    for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
      try {
        st::File file(path, backend);
        ADD_FAILURE() << path << " opened";
      } catch (const st::Error &err) {
        EXPECT_EQ(st_status_name(err.status()), status) << path << ": " << err.what();
        EXPECT_NE(std::string(err.what()).find(message), std::string::npos)
            << path << ": " << err.what();
        EXPECT_NE(std::string(err.what()).find(path), std::string::npos) << err.what();
        EXPECT_EQ(err.name(), "torch_safetensors.structure");
      }
      st::LoadOptions opts;
      opts.backend = backend;
      EXPECT_THROW(st::load(path, opts), st::Error) << path;
      // Without aliases the record is never read: a valid safetensors file.
      opts.aliases = false;
      st::TensorDict flat = st::load(path, opts);
      EXPECT_EQ(flat.keys(), st::File(path, backend, false, false).names()) << path;
    }
  }
}
