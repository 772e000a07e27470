// Exported programs (<safetensors/export.hpp>) without a compiled package:
// the manifest reader (one case per way export.json can be wrong), the error
// kinds, and what open_exported refuses before it reaches the package.
// Loading and running real packages is examples/cpp/deploy_export's job
// (scripts/check-cpp.sh), where the packages are compiled once and cached.
#include <safetensors/export.hpp>

#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <torch/headeronly/version.h>

#include <fstream>
#include <set>
#include <string>
#include <sys/stat.h>

#include "cpp_testutil.h"

namespace st = safetensors;

namespace {

const std::string kGood = R"({
  "format": "torch_safetensors.export", "version": 1, "torch": "2.13.0+cpu",
  "package": "model.pt2", "weights": "model.safetensors", "weights_sha256": "ab12",
  "constants": {
    "fc.weight": {"dtype": "F32", "shape": [4, 3], "tensor": "fc.weight"},
    "head.weight": {"dtype": "BF16", "shape": [], "tensor": "fc.weight"}
  }
})";

// kGood with the first occurrence of from replaced by to.
std::string edited(const std::string &from, const std::string &to) {
  std::string s = kGood;
  size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

void write_text(const std::string &path, const std::string &text) {
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace

TEST(ExportManifest, Parses) {
  st::ExportManifest m = st::parse_export_manifest(kGood, "good");
  EXPECT_EQ(m.torch, "2.13.0+cpu");
  EXPECT_EQ(m.package, "model.pt2");
  EXPECT_EQ(m.weights, "model.safetensors");
  EXPECT_EQ(m.weights_sha256, "ab12");
  ASSERT_EQ(m.constants.size(), 2u);
  EXPECT_EQ(m.constants.at("fc.weight").dtype, "F32");
  EXPECT_EQ(m.constants.at("fc.weight").shape, (std::vector<int64_t>{4, 3}));
  EXPECT_TRUE(m.constants.at("head.weight").shape.empty());
  EXPECT_EQ(m.constants.at("head.weight").tensor, "fc.weight");  // tied: stored once
  // The weights file's own record carries no hash.
  EXPECT_EQ(st::parse_export_manifest(edited(R"("weights_sha256": "ab12",)", ""), "")
                .weights_sha256,
            "");
}

TEST(ExportManifest, EveryDefectIsABadManifest) {
  struct Case {
    const char *what;
    std::string json;
    st_status status;
    const char *name;
  };
  const st_status kBad = ST_ERR_HEADER_DESERIALIZATION;
  const Case cases[] = {
      {"not JSON", "{", kBad, ""},
      {"not an object", "[1]", kBad, ""},
      {"a key twice", edited(R"("version": 1,)", R"("version": 1, "version": 1,)"), kBad, ""},
      {"another format", edited("torch_safetensors.export", "other"), kBad, ""},
      {"version 2", edited(R"("version": 1)", R"("version": 2)"), ST_ERR_UNSUPPORTED, ""},
      {"version a string", edited(R"("version": 1)", R"("version": "1")"), kBad, ""},
      {"version 1.0", edited(R"("version": 1)", R"("version": 1.0)"), kBad, ""},
      {"no torch", edited(R"("torch": "2.13.0+cpu",)", ""), kBad, ""},
      {"package not a string", edited(R"("model.pt2")", "3"), kBad, ""},
      {"constants an array", edited(R"("constants": {)", R"("constants": [], "x": {)"), kBad,
       ""},
      {"constant not an object", edited(R"({"dtype": "BF16", "shape": [], "tensor": "fc.weight"})",
                                        "7"),
       kBad, "head.weight"},
      {"unknown dtype", edited(R"("F32")", R"("F33")"), kBad, "fc.weight"},
      {"no dtype", edited(R"("dtype": "F32",)", ""), kBad, "fc.weight"},
      {"negative size", edited("[4, 3]", "[4, -3]"), kBad, "fc.weight"},
      {"fractional size", edited("[4, 3]", "[4, 3.0]"), kBad, "fc.weight"},
      {"size over int64", edited("[4, 3]", "[4, 9223372036854775808]"), kBad, "fc.weight"},
      {"shape not an array", edited("[4, 3]", "12"), kBad, "fc.weight"},
      {"no tensor", edited(R"(, "tensor": "fc.weight"})", "}"), kBad, "fc.weight"},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    try {
      st::parse_export_manifest(c.json, "m.json");
      ADD_FAILURE() << "accepted";
    } catch (const st::ExportError &e) {
      EXPECT_EQ(e.kind(), st::ExportErrc::bad_manifest);
      EXPECT_EQ(e.status(), c.status) << e.what();
      EXPECT_EQ(e.name(), c.name) << e.what();
      EXPECT_NE(std::string(e.what()).find("bad manifest: m.json: "), std::string::npos)
          << e.what();
    }
  }
}

TEST(ExportError, KindsHaveDistinctNames) {
  std::set<std::string> names;
  for (int k = 1; k <= 8; ++k) {
    std::string n = st::export_errc_name(static_cast<st::ExportErrc>(k));
    EXPECT_FALSE(n.empty()) << k;
    names.insert(n);
  }
  EXPECT_EQ(names.size(), 8u);
  EXPECT_STREQ(st::export_errc_name(static_cast<st::ExportErrc>(99)), "");
  st::ExportError e(st::ExportErrc::missing_constant, ST_ERR_NOT_FOUND, "m", "fc.bias");
  const st::Error &base = e;  // caught as the adapter's one exception type
  EXPECT_EQ(base.status(), ST_ERR_NOT_FOUND);
  EXPECT_EQ(base.name(), "fc.bias");
  EXPECT_STREQ(e.what(), "ST_ERR_NOT_FOUND: missing constant: m name 'fc.bias'");
}

TEST(OpenExported, RefusesBeforeThePackage) {
  // No export.json.
  std::string dir = sttest::temp_path("export_dir");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  try {
    st::open_exported(dir);
    ADD_FAILURE() << "accepted";
  } catch (const st::ExportError &e) {
    EXPECT_EQ(e.kind(), st::ExportErrc::bad_manifest);
    EXPECT_EQ(e.status(), ST_ERR_IO);
  }

  // Another torch release: refused before the package or the weights are
  // read (neither exists here).
  write_text(dir + "/export.json", edited("2.13.0+cpu", "1.0.0+cpu"));
  try {
    st::open_exported(dir);
    ADD_FAILURE() << "accepted";
  } catch (const st::ExportError &e) {
    EXPECT_EQ(e.kind(), st::ExportErrc::torch_version);
    EXPECT_EQ(e.status(), ST_ERR_UNSUPPORTED);
  }

  // This torch release, but the package is not an AOTInductor package.
  write_text(dir + "/export.json", edited("2.13.0+cpu", std::string(TORCH_VERSION) + "+cpu"));
  write_text(dir + "/model.pt2", "not a zip archive");
  st::save(dir + "/model.safetensors", {{"fc.weight", at::zeros({4, 3})}});
  try {
    st::open_exported(dir);
    ADD_FAILURE() << "accepted";
  } catch (const st::ExportError &e) {
    EXPECT_EQ(e.kind(), st::ExportErrc::bad_package) << e.what();
    EXPECT_EQ(e.status(), ST_ERR_UNSUPPORTED);
  }

  // Package + weights: an unreadable weights file is the core's error.
  try {
    st::open_exported(dir + "/model.pt2", dir + "/absent.safetensors");
    ADD_FAILURE() << "accepted";
  } catch (const st::ExportError &e) {
    ADD_FAILURE() << e.what();
  } catch (const st::Error &e) {
    EXPECT_EQ(e.status(), ST_ERR_IO) << e.what();
  }
}
