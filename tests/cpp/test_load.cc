// Loading: dtypes, zero-copy lifetime, backends, filters, aliases, errors.
#include <safetensors/torch.hpp>

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/ones.h>
#include <c10/core/ScalarType.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "cpp_testutil.h"

namespace st = safetensors;

namespace {

std::vector<uint8_t> bytes_of(const at::Tensor &t) {
  at::Tensor c = t.contiguous();
  auto p = static_cast<const uint8_t *>(c.const_data_ptr());
  return std::vector<uint8_t>(p, p + c.nbytes());
}

// (format name, torch dtype) for every dtype with a torch counterpart.
struct DtypeCase {
  const char *name;
  at::ScalarType type;
};
const DtypeCase kDtypes[] = {
    {"BOOL", at::kBool},
    {"F4", at::ScalarType::Float4_e2m1fn_x2},
    {"U8", at::kByte},
    {"I8", at::kChar},
    {"F8_E5M2", at::ScalarType::Float8_e5m2},
    {"F8_E4M3", at::ScalarType::Float8_e4m3fn},
    {"F8_E8M0", at::ScalarType::Float8_e8m0fnu},
    {"F8_E4M3FNUZ", at::ScalarType::Float8_e4m3fnuz},
    {"F8_E5M2FNUZ", at::ScalarType::Float8_e5m2fnuz},
    {"I16", at::kShort},
    {"U16", at::ScalarType::UInt16},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"I32", at::kInt},
    {"U32", at::ScalarType::UInt32},
    {"F32", at::kFloat},
    {"C64", at::kComplexFloat},
    {"F64", at::kDouble},
    {"I64", at::kLong},
    {"U64", at::ScalarType::UInt64},
};

// A [3, 4] tensor (F4: [3, 2]) of the fixtures' pattern for seed.
at::Tensor patterned(at::ScalarType type, unsigned seed) {
  std::vector<int64_t> shape = {3, type == at::ScalarType::Float4_e2m1fn_x2 ? 2 : 4};
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  auto bytes = sttest::pattern(t.nbytes(), seed);
  if (type == at::kBool)
    for (auto &b : bytes) b %= 2;
  std::memcpy(t.mutable_data_ptr(), bytes.data(), bytes.size());
  return t;
}

std::string fixture(const std::string &name) {
  std::string dir = sttest::fixtures_dir();
  if (dir.empty()) return {};
  std::string path = dir + "/" + name;
  return access(path.c_str(), R_OK) == 0 ? path : std::string();
}

}  // namespace

TEST(Dtypes, MappingCoversTheFormat) {
  int without = 0;
  for (int d = 0; d < ST_DTYPE_COUNT; ++d) {
    auto type = st::to_scalar_type(static_cast<st_dtype>(d));
    if (!type) {
      ++without;
      continue;
    }
    EXPECT_EQ(st::to_st_dtype(*type), static_cast<st_dtype>(d));
  }
  EXPECT_EQ(without, 2);  // F6_E2M3, F6_E3M2
  EXPECT_FALSE(st::to_st_dtype(at::kComplexDouble).has_value());
}

TEST(Dtypes, CppSaveThenLoadIsBitwise) {
  for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
    st::TensorDict in;
    unsigned seed = 0;
    for (const auto &c : kDtypes) in.insert(std::string("t_") + c.name, patterned(c.type, seed++));
    std::string path = sttest::temp_path("dtypes");
    st::save(path, in, {{"format", "pt"}}, {/*durable=*/false});

    st::File file(path);
    for (const auto &c : kDtypes) {
      auto [dtype, shape] = file.info(std::string("t_") + c.name);
      EXPECT_EQ(dtype, c.name);
      EXPECT_EQ(shape, (std::vector<int64_t>{3, 4})) << c.name;  // F4: the file's shape
    }
    st::LoadOptions opts;
    opts.backend = backend;
    st::TensorDict out = st::load(path, opts);
    ASSERT_EQ(out.size(), in.size());
    for (const auto &[name, t] : in) {
      const at::Tensor &u = out.at(name);
      EXPECT_EQ(u.scalar_type(), t.scalar_type()) << name;
      EXPECT_EQ(u.sizes(), t.sizes()) << name;
      EXPECT_EQ(bytes_of(u), bytes_of(t)) << name;
    }
    EXPECT_EQ(st::load_metadata(path).at("format"), "pt");
    unlink(path.c_str());
  }
}

TEST(Dtypes, PythonReferenceSaveThenCppLoad) {
  std::string path = fixture("ref_dtypes.safetensors");
  ASSERT_FALSE(path.empty()) << "no Python fixtures (ST_CPP_FIXTURES)";
  st::TensorDict out = st::load(path);
  unsigned seed = 0;
  for (const auto &c : kDtypes) {
    std::string name = std::string("t_") + c.name;
    at::Tensor expected = patterned(c.type, seed++);
    const at::Tensor &t = out.at(name);
    EXPECT_EQ(t.scalar_type(), c.type) << name;
    EXPECT_EQ(t.sizes(), expected.sizes()) << name;
    EXPECT_EQ(bytes_of(t), bytes_of(expected)) << name;
  }
  const at::Tensor &scalar = out.at("scalar_f32");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(bytes_of(scalar), sttest::pattern(4, 99));
  const at::Tensor &empty = out.at("empty_f16");
  EXPECT_EQ(empty.sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(empty.scalar_type(), at::kHalf);
  EXPECT_EQ(st::load_metadata(path).at("format"), "pt");

  // File order: by offset, as the reference wrote them (8-byte types first).
  st::File file(path);
  auto names = file.names();
  EXPECT_EQ(out.keys(), names);
  EXPECT_EQ(names.front(), "t_U64");  // highest dtype rank
}

TEST(Dtypes, CppSaveIsByteIdenticalToTheReference) {
  std::string path = fixture("ref_dtypes.safetensors");
  ASSERT_FALSE(path.empty()) << "no Python fixtures (ST_CPP_FIXTURES)";
  st::TensorDict ref = st::load(path);
  std::vector<uint8_t> ours = st::save_to_bytes(ref, st::load_metadata(path));
  EXPECT_EQ(ours, sttest::read_file(path));
}

TEST(Dtypes, F6LoadsAsFlatRawBytes) {
  std::string path = fixture("f6.safetensors");
  ASSERT_FALSE(path.empty()) << "no Python fixtures (ST_CPP_FIXTURES)";
  for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
    st::LoadOptions opts;
    opts.backend = backend;
    at::Tensor x = st::load(path, opts).at("x");
    EXPECT_EQ(x.scalar_type(), at::kByte);
    EXPECT_EQ(x.sizes(), (std::vector<int64_t>{6}));
    EXPECT_EQ(bytes_of(x), sttest::pattern(6, 5));
  }
}

TEST(Save, RefusesWhatTheFormatCannotHold) {
  std::string path = sttest::temp_path("refuse");
  try {
    st::save(path, {{"x", at::ones({2}, at::TensorOptions().dtype(at::kComplexDouble))}});
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_UNSUPPORTED);
    EXPECT_EQ(e.name(), "x");
  }
  try {
    st::save(path, {{"__metadata__", at::ones({2})}});
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_RESERVED_NAME);
  }
  EXPECT_NE(access(path.c_str(), F_OK), 0);  // nothing was written
}

TEST(Save, NonContiguousAndConjugateTensorsAreMaterialized) {
  at::Tensor base = at::arange(12, at::TensorOptions().dtype(at::kFloat)).reshape({3, 4});
  at::Tensor t = base.t();  // a transposed view
  at::Tensor c = at::arange(4, at::TensorOptions().dtype(at::kFloat))
                     .to(at::kComplexFloat).conj();
  std::string path = sttest::temp_path("views");
  st::save(path, {{"t", t}, {"c", c}}, {}, {false});
  auto out = st::load(path);
  EXPECT_TRUE(at::equal(out.at("t"), t));
  EXPECT_TRUE(at::equal(out.at("c"), c.resolve_conj()));
  unlink(path.c_str());
}

TEST(ZeroCopy, TensorsViewTheMappingAndOutliveHandleAndFile) {
  std::string path = sttest::temp_path("zc");
  st::save(path,
           {{"a", at::arange(1000, at::TensorOptions().dtype(at::kFloat))},
            {"b", at::arange(10, at::TensorOptions().dtype(at::kLong))},
            {"e", at::empty({0, 4}, at::TensorOptions().dtype(at::kHalf))}},
           {}, {false});
  at::Tensor a, b;
  {
    st::File file(path);
    auto maps = sttest::mappings_of(path);
    ASSERT_FALSE(maps.empty());
    auto all = file.tensors();
    a = all.at("a");
    b = all.at("b");
    for (const at::Tensor *t : {&a, &b}) {
      auto p = reinterpret_cast<uintptr_t>(t->const_data_ptr());
      bool inside = false;
      for (auto [lo, hi] : maps) inside |= p >= lo && p + t->nbytes() <= hi;
      EXPECT_TRUE(inside) << "data_ptr outside the mapping";
    }
    file.close();
    EXPECT_FALSE(file.is_open());
    EXPECT_THROW(file.names(), st::Error);
  }
  ASSERT_EQ(unlink(path.c_str()), 0);
  EXPECT_FALSE(sttest::mappings_of(path).empty());  // still mapped, "(deleted)"
  EXPECT_TRUE(at::equal(a, at::arange(1000, at::TensorOptions().dtype(at::kFloat))));
  EXPECT_TRUE(at::equal(b, at::arange(10, at::TensorOptions().dtype(at::kLong))));

  a.reset();
  EXPECT_FALSE(sttest::mappings_of(path).empty());  // b still views it
  at::Tensor b_view = b.slice(0, 2, 5);
  b.reset();
  EXPECT_FALSE(sttest::mappings_of(path).empty());  // a view of b still does
  EXPECT_EQ(b_view[0].item<int64_t>(), 2);
  b_view.reset();
  EXPECT_TRUE(sttest::mappings_of(path).empty());  // the last one is gone
}

TEST(ZeroCopy, WritesAreCopyOnWriteAndNeverReachTheFile) {
  std::string path = sttest::temp_path("cow");
  st::save(path, {{"x", at::zeros({16}, at::TensorOptions().dtype(at::kFloat))}}, {}, {false});
  auto before = sttest::read_file(path);
  at::Tensor x = st::load(path).at("x");
  x.fill_(7.0);
  EXPECT_EQ(x.sum().item<float>(), 112.0f);
  EXPECT_EQ(sttest::read_file(path), before);
  EXPECT_TRUE(at::equal(st::load(path).at("x"), at::zeros({16})));
  unlink(path.c_str());
}

TEST(Backends, PreadAndCopyGiveOwnedMemory) {
  std::string path = sttest::temp_path("owned");
  at::Tensor ref = at::arange(64, at::TensorOptions().dtype(at::kDouble));
  st::save(path, {{"x", ref}}, {}, {false});
  for (int mode = 0; mode < 2; ++mode) {
    st::LoadOptions opts;
    if (mode == 0) opts.backend = st::Backend::pread;
    else opts.copy = true;
    at::Tensor x = st::load(path, opts).at("x");
    EXPECT_TRUE(sttest::mappings_of(path).empty()) << mode;
    EXPECT_TRUE(at::equal(x, ref)) << mode;
  }
  st::File file(path, st::Backend::pread);
  EXPECT_EQ(file.backend(), st::Backend::pread);
  EXPECT_TRUE(at::equal(file.tensor("x"), ref));
  unlink(path.c_str());
}

TEST(Load, OtherDevicesGoThroughStaging) {
  // The CPU build of torch has no accelerator; the meta device still takes
  // the non-CPU path (staging, then .to()).
  std::string path = sttest::temp_path("device");
  st::save(path, {{"x", at::ones({2, 3})}, {"y", at::ones({4}, at::TensorOptions().dtype(at::kHalf))}},
           {}, {false});
  for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
    st::LoadOptions opts;
    opts.backend = backend;
    opts.device = c10::Device(c10::kMeta);
    auto out = st::load(path, opts);
    EXPECT_TRUE(out.at("x").is_meta());
    EXPECT_EQ(out.at("x").sizes(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(out.at("y").scalar_type(), at::kHalf);
    EXPECT_TRUE(st::File(path, backend).tensor("y", opts).is_meta());
  }
  EXPECT_TRUE(sttest::mappings_of(path).empty());  // no CPU view kept
  unlink(path.c_str());
}

TEST(Load, FilterKeepsFileOrder) {
  std::string path = sttest::temp_path("filter");
  st::save(path,
           {{"enc.w", at::ones({2})}, {"dec.w", at::ones({3})}, {"enc.b", at::ones({1})}},
           {}, {false});
  st::LoadOptions opts;
  opts.filter = [](const std::string &n) { return n.rfind("enc.", 0) == 0; };
  auto out = st::load(path, opts);
  EXPECT_EQ(out.keys(), (std::vector<std::string>{"enc.b", "enc.w"}));
  EXPECT_FALSE(out.contains("dec.w"));
  try {
    out.at("dec.w");
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_NOT_FOUND);
    EXPECT_EQ(e.name(), "dec.w");
  }
  unlink(path.c_str());
}

TEST(Load, UnalignedTensorsAreCopied) {
  // A foreign writer may put an F32 at an odd offset: U8[1] first.
  std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  while (header.size() % 8) header += ' ';
  uint64_t n = header.size();
  float vals[2] = {1.5f, -2.0f};
  std::string raw(reinterpret_cast<const char *>(&n), 8);
  raw += header;
  raw += '\x2a';
  raw.append(reinterpret_cast<const char *>(vals), sizeof vals);
  std::vector<uint8_t> file(raw.begin(), raw.end());
  std::string path = sttest::temp_path("unaligned");
  sttest::write_file(path, file);
  at::Tensor b = st::load(path).at("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.const_data_ptr()) % 4, 0u);
  EXPECT_EQ(b[0].item<float>(), 1.5f);
  EXPECT_EQ(b[1].item<float>(), -2.0f);
  unlink(path.c_str());
}

TEST(Aliases, StructureRecordTiedWeightsShareStorage) {
  // The record as torch_safetensors writes it: b.weight stored once as a.weight.
  std::string record =
      R"({"version":1,"root":{"t":"dict","items":[["a.weight",{"t":"tensor","name":"a.weight","obj":0}],)"
      R"(["b.weight",{"t":"tensor","name":"a.weight","obj":0}],["n",{"t":"list","items":[1,)"
      R"({"t":"tensor","name":"a.weight"}]}]]}})";
  std::string path = sttest::temp_path("alias");
  st::save(path, {{"a.weight", at::arange(6, at::TensorOptions().dtype(at::kFloat))}},
           {{"torch_safetensors.structure", record}}, {false});
  st::File file(path);
  EXPECT_EQ(file.aliases().size(), 2u);
  EXPECT_EQ(file.aliases().at("b.weight"), "a.weight");
  EXPECT_EQ(file.aliases().at("n.1"), "a.weight");
  EXPECT_EQ(file.size(), 1u);
  auto all = file.tensors();
  EXPECT_EQ(all.keys(), (std::vector<std::string>{"a.weight", "b.weight", "n.1"}));
  EXPECT_EQ(all.at("a.weight").const_data_ptr(), all.at("b.weight").const_data_ptr());
  EXPECT_TRUE(file.contains("b.weight"));
  EXPECT_TRUE(at::equal(file.tensor("b.weight"), all.at("a.weight")));
  unlink(path.c_str());

  // A broken record is refused, as Python's torch.load refuses it; without
  // aliases the record is never read and the file loads as a flat dict.
  st::save(path, {{"a", at::ones({1})}}, {{"torch_safetensors.structure", "{\"root\": [1,"}},
           {false});
  try {
    st::File broken(path);
    FAIL() << "a broken record was accepted";
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_HEADER_DESERIALIZATION);
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
  st::LoadOptions flat;
  flat.aliases = false;
  EXPECT_EQ(st::load(path, flat).keys(), (std::vector<std::string>{"a"}));
  unlink(path.c_str());
}

TEST(Aliases, RecordDtypeValuesAreTorchPythonNames) {
  // Python writes torch.dtype values under their Python names; every name
  // getattr(torch, name) knows is accepted, whether or not the format can
  // store tensors of that dtype, and nothing else.
  std::string path = sttest::temp_path("record_dtype");
  for (const char *name : {"float32", "float", "complex128", "qint8", "Float", "float99"}) {
    std::string record = std::string(R"({"version":1,"root":{"t":"dtype","v":")") + name + "\"}}";
    st::save(path, {{"w", at::ones({1})}}, {{"torch_safetensors.structure", record}}, {false});
    bool torch_name = name[0] != 'F' && std::string(name) != "float99";
    if (torch_name) {
      EXPECT_NO_THROW(st::File{path}) << name;
    } else {
      EXPECT_THROW(st::File{path}, st::Error) << name;
    }
  }
  unlink(path.c_str());
}

TEST(Aliases, TiedSaveWritesTheRecordAsPythonDoes) {
  // Compact, version first, ensure_ascii: the bytes json.dumps writes.
  std::string odd = "\xc3\xa9\n\xf0\x9f\x98\x80";  // e-acute, newline, an emoji
  at::Tensor w = at::ones({2});
  std::string path = sttest::temp_path("tied_record");
  st::save(path, {{odd, w}, {"b\"", w}}, {}, {false});
  st::File file(path);
  EXPECT_EQ(file.metadata("torch_safetensors.structure"),
            R"({"version":1,"root":{"t":"dict","items":[["\u00e9\n\ud83d\ude00",)"
            R"({"t":"tensor","name":"\u00e9\n\ud83d\ude00"}],["b\"",)"
            R"({"t":"tensor","name":"\u00e9\n\ud83d\ude00"}]]}})");
  EXPECT_EQ(file.aliases(), (std::map<std::string, std::string>{{"b\"", odd}}));
  unlink(path.c_str());
}

TEST(Aliases, PythonTorchSaveTiedWeights) {
  std::string path = fixture("tied.safetensors");
  ASSERT_FALSE(path.empty()) << "no tied.safetensors from the Python fixtures";
  auto all = st::load(path);
  ASSERT_TRUE(all.contains("b.weight"));
  EXPECT_EQ(all.at("a.weight").const_data_ptr(), all.at("b.weight").const_data_ptr());
  at::Tensor expected = at::empty({4, 3}, at::TensorOptions().dtype(at::kFloat));
  auto bytes = sttest::pattern(48, 1);
  std::memcpy(expected.mutable_data_ptr(), bytes.data(), 48);
  EXPECT_EQ(bytes_of(all.at("b.weight")), bytes);
}

// save_file(policy="tie") records the dropped name as metadata, not as a
// structure record: C++ gives it back sharing storage, as Python's load_file.
TEST(Aliases, PythonSaveFileTieMetadata) {
  std::string path = fixture("tied_alias_metadata.safetensors");
  ASSERT_FALSE(path.empty()) << "no tied_alias_metadata.safetensors from the Python fixtures";
  st::File file(path);
  EXPECT_EQ(file.size(), 2u);  // a.weight and a.bias stored; b.weight dropped
  EXPECT_EQ(file.aliases(), (std::map<std::string, std::string>{{"b.weight", "a.weight"}}));
  auto all = st::load(path);
  ASSERT_TRUE(all.contains("b.weight"));
  EXPECT_EQ(all.at("a.weight").const_data_ptr(), all.at("b.weight").const_data_ptr());
  st::LoadOptions flat;
  flat.aliases = false;
  EXPECT_FALSE(st::load(path, flat).contains("b.weight"));
}

TEST(Errors, CorruptFilesThrowWithStatusAndOffset) {
  std::string path = sttest::temp_path("corrupt");
  st::save(path, {{"x", at::ones({4})}}, {}, {false});
  auto good = sttest::read_file(path);

  struct Case {
    const char *what;
    std::vector<uint8_t> bytes;
    st_status status;
  };
  std::vector<uint8_t> truncated(good.begin(), good.end() - 1);
  std::vector<uint8_t> trailing = good;
  trailing.push_back(0);
  std::vector<uint8_t> bad_json = good;
  bad_json[8] = '[';
  std::vector<uint8_t> too_long = good;
  too_long[0] = 0xff;
  std::vector<Case> cases = {
      {"short", {1, 2, 3}, ST_ERR_HEADER_TOO_SMALL},
      {"truncated", truncated, ST_ERR_INCOMPLETE_BUFFER},
      {"trailing", trailing, ST_ERR_INCOMPLETE_BUFFER},
      {"not an object", bad_json, ST_ERR_HEADER_DESERIALIZATION},
      {"header length", too_long, ST_ERR_INVALID_HEADER_LENGTH},
  };
  for (const auto &c : cases) {
    sttest::write_file(path, c.bytes);
    for (auto backend : {st::Backend::mmap, st::Backend::pread}) {
      st::LoadOptions opts;
      opts.backend = backend;
      try {
        st::load(path, opts);
        ADD_FAILURE() << c.what << " loaded";
      } catch (const st::Error &e) {
        EXPECT_EQ(e.status(), c.status) << c.what << ": " << e.what();
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      }
    }
  }
  sttest::write_file(path, bad_json);
  try {
    st::File f(path);
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.offset(), 8u);  // the first header byte
  }
  unlink(path.c_str());

  try {
    st::File f(path);  // gone
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_IO);
    EXPECT_NE(e.sys_errno(), 0);
  }
}

TEST(Errors, MissingNamesThrowNotFound) {
  std::string path = sttest::temp_path("missing");
  st::save(path, {{"x", at::ones({4})}}, {}, {false});
  st::File file(path);
  try {
    file.tensor("y");
    FAIL();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_NOT_FOUND);
    EXPECT_EQ(e.name(), "y");
  }
  EXPECT_FALSE(file.metadata("nope").has_value());
  unlink(path.c_str());
}
