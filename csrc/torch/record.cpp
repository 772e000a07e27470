// The structure record as docs/RECORD.md specifies it: C++ accepts and refuses
// exactly the records Python's torch.load does (the same rules in the same
// order as torch_plugin/torch_safetensors/_record.py), and keeps what a flat
// name -> tensor map needs: the aliases. The JSON is read by the project's
// one strict reader (csrc/common/json.h).
#include "record.hpp"

#include "json.hpp"

#include "common/common.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstring>
#include <set>
#include <utility>
#include <vector>

namespace safetensors::detail {
namespace {

// docs/RECORD.md: JSON nesting of at most 256 levels, the record object being
// level 1.
constexpr uint32_t kMaxDepth = 256;

[[noreturn]] void refuse(std::string message) {
  throw RecordError{ST_ERR_HEADER_DESERIALIZATION, "structure record: " + std::move(message)};
}

// Python's repr of a decoded string, near enough for a message.
std::string quoted(const std::string &s) { return "'" + s + "'"; }

// A JSON integer as Python's str(int) writes it ("-0" is 0).
std::string integer_text(std::string_view raw) {
  return raw == "-0" ? std::string("0") : std::string(raw);
}

bool device_parses(const std::string &s) {
  try {
    c10::Device d(s);
    (void)d;
    return true;
  } catch (const std::exception &) {
    return false;
  }
}

// A torch.dtype by its Python name: torch's own table of the names Python
// gives torch.* dtypes (legacy ones such as "float" included), so C++ accepts
// exactly what Python's getattr(torch, name) accepts.
bool dtype_known(const std::string &name) { return c10::getStringToDtypeMap().count(name) != 0; }

class Walker {
 public:
  Walker(const Json &doc, const st_file *file) : doc_(doc), file_(file) {}

  std::map<std::string, std::string> aliases;

  // path: the node's path name; named: whether its tensors have one (the
  // nodes of an odict's "meta" do not).
  void node(size_t k, const std::string &path, bool root, bool named) {
    if (doc_.is_string(k)) return;
    if (doc_.type(k) == ST__JSON_PRIMITIVE) {
      if (doc_.is_number(k) && !doc_.is_integer(k) && !doc_.is_finite(k))
        refuse("bad float " + std::string(doc_.raw(k)));
      return;
    }
    if (doc_.is_array(k)) refuse("unexpected JSON array");
    size_t t = doc_.find(k, "t");
    std::string type = t != Json::npos && doc_.is_string(t) ? doc_.string(t) : std::string();
    if (type == "float") {
      size_t v = doc_.find(k, "v");
      if (v == Json::npos ||
          !(doc_.string_is(v, "inf") || doc_.string_is(v, "-inf") || doc_.string_is(v, "nan")))
        refuse("bad float");
    } else if (type == "list" || type == "tuple") {
      size_t items = doc_.find(k, "items");
      if (items == Json::npos || !doc_.is_array(items)) refuse(type + " without items");
      size_t i = 0;
      for (size_t c : doc_.children(items))
        node(c, join(path, std::to_string(i++)), false, named);
    } else if (type == "dict" || type == "odict") {
      mapping(k, type == "odict", path, named);
    } else if (type == "size") {
      size_t v = doc_.find(k, "v");
      if (v == Json::npos || !doc_.is_array(v)) refuse("bad size");
      for (size_t c : doc_.children(v))
        if (!doc_.is_integer(c)) refuse("bad size");
    } else if (type == "dtype") {
      size_t v = doc_.find(k, "v");
      if (v == Json::npos || !doc_.is_string(v) || !dtype_known(doc_.string(v)))
        refuse(with_raw("unknown dtype", v));
    } else if (type == "device") {
      device(doc_.find(k, "v"), true);
    } else if (type == "tensor") {
      tensor(k, path, root, named);
    } else {
      refuse(with_raw("unknown node type", t));
    }
  }

 private:
  static std::string join(const std::string &prefix, const std::string &part) {
    return prefix.empty() ? part : prefix + "." + part;
  }

  bool stored(const std::string &name, size_t *index) const {
    return st_tensor_find(file_, name.data(), name.size(), index) == ST_OK;
  }

  // what, then a space and the token's JSON text when there is a token.
  // Appended, never "literal" + std::string&&, which gcc 12 at -O3 reports
  // as a false -Wrestrict (an error with -Werror).
  std::string with_raw(const char *what, size_t tok) const {
    std::string s = what;
    if (tok != Json::npos) s.append(" ").append(std::string(doc_.raw(tok)));
    return s;
  }

  // v: the token of a device string, or npos (absent: cpu when optional).
  void device(size_t v, bool required) const {
    if (v == Json::npos && !required) return;
    if (v == Json::npos || !doc_.is_string(v) || !device_parses(doc_.string(v)))
      refuse(with_raw("bad device", v));
  }

  void mapping(size_t k, bool ordered, const std::string &path, bool named) {
    size_t items = doc_.find(k, "items");
    if (items == Json::npos || !doc_.is_array(items)) refuse("dict without items");
    std::set<std::pair<bool, std::string>> keys;  // (is a string, text): 0 != "0"
    for (size_t it : doc_.children(items)) {
      if (!doc_.is_array(it) || doc_.size(it) != 2) refuse("bad dict item");
      size_t key = it + 1;
      std::string text;
      if (doc_.is_string(key)) text = doc_.string(key);
      else if (doc_.is_integer(key)) text = integer_text(doc_.raw(key));
      else refuse("bad dict item");
      if (!keys.emplace(doc_.is_string(key), text).second)
        refuse("duplicate dict key " + (doc_.is_string(key) ? quoted(text) : text));
      node(doc_.children(it)[1], join(path, text), false, named);
    }
    size_t meta = doc_.find(k, "meta");
    if (ordered && meta != Json::npos) node(meta, path, false, false);
  }

  void tensor(size_t k, const std::string &path, bool root, bool named) {
    size_t name_tok = doc_.find(k, "name");
    std::string name;
    size_t index = 0;
    if (name_tok == Json::npos || !doc_.is_string(name_tok) ||
        !stored(name = doc_.string(name_tok), &index))
      refuse("names tensor " + (name_tok != Json::npos ? std::string(doc_.raw(name_tok)) : "None") +
             ", which is not in the file");
    for (const char *flag : {"rg", "param"}) {
      size_t f = doc_.find(k, flag);
      if (f != Json::npos && !doc_.is_bool(f))
        refuse(std::string("bad ") + flag + " " + std::string(doc_.raw(f)));
    }
    device(doc_.find(k, "device"), false);
    size_t obj = doc_.find(k, "obj");
    if (obj != Json::npos) {
      if (!doc_.is_integer(obj) || (doc_.raw(obj)[0] == '-' && doc_.raw(obj) != "-0"))
        refuse("bad obj " + std::string(doc_.raw(obj)));
      auto seen = objs_.emplace(integer_text(doc_.raw(obj)), name);
      if (!seen.second) {
        if (seen.first->second != name)
          refuse("bad obj " + seen.first->first + ": it names " + quoted(seen.first->second) +
                 " and " + quoted(name));
        alias(path, root, named, name);
        return;  // the same object again: nothing more to check (as Python)
      }
    }
    size_t shape = doc_.find(k, "shape");
    if (shape != Json::npos) {
      st_torch_view v;
      bool one = st_tensor_torch_view(file_, index, &v) == ST_OK && v.rank == 1 && v.numel == 1;
      if (!doc_.is_array(shape) || doc_.size(shape) != 0 || !one)
        refuse("bad shape " + std::string(doc_.raw(shape)) + " for " + quoted(name));
    }
    alias(path, root, named, name);
  }

  void alias(const std::string &path, bool root, bool named, const std::string &name) {
    if (!named) return;
    std::string natural = root ? std::string("tensor") : path;
    size_t index;
    if (natural != name && !stored(natural, &index)) aliases.emplace(std::move(natural), name);
  }

  const Json &doc_;
  const st_file *file_;
  std::map<std::string, std::string> objs_;  // obj number -> the name it names
};

}  // namespace

std::map<std::string, std::string> record_aliases(std::string_view json, const st_file *file) {
  Json doc(json, kMaxDepth);
  if (!doc.ok()) {
    if (doc.error().code == ST__JSON_DEPTH) refuse("nests too deeply");
    refuse(std::string("not valid JSON: ") + doc.error().message + " at " +
           std::to_string(doc.error().pos));
  }
  if (doc.has_duplicate_key()) refuse("not valid JSON: a field appears twice in one object");
  if (!doc.is_object(0)) refuse("not a JSON object");
  size_t version = doc.find(0, "version");
  if (version == Json::npos || !doc.is_literal(version, std::to_string(kRecordVersion)))
    throw RecordError{ST_ERR_UNSUPPORTED,
                      "structure record has an unsupported version " +
                          (version == Json::npos ? std::string("None")
                                                 : std::string(doc.raw(version))) +
                          " (this reader knows version " + std::to_string(kRecordVersion) +
                          ")"};
  size_t root = doc.find(0, "root");
  if (root == Json::npos) refuse("no root");
  Walker w(doc, file);
  w.node(root, std::string(), true, true);
  return std::move(w.aliases);
}

namespace {

void put_bytes(void *ctx, const char *s, size_t len) {
  static_cast<std::string *>(ctx)->append(s, len);
}

// A JSON string as Python's json.dumps(ensure_ascii=True) writes it. Bytes
// that are not UTF-8 are copied, for the writer to refuse.
void put_string(std::string &out, const std::string &s) {
  st__json_escape(s.data(), s.size(), ST__JSON_ESCAPE_ASCII, put_bytes, &out);
}

}  // namespace

std::string flat_record(const std::vector<std::pair<std::string, std::string>> &items) {
  std::string out = "{\"version\":" + std::to_string(kRecordVersion) +
                    ",\"root\":{\"t\":\"dict\",\"items\":[";
  for (size_t i = 0; i < items.size(); ++i) {
    out += i ? ",[" : "[";
    put_string(out, items[i].first);
    out += ",{\"t\":\"tensor\",\"name\":";
    put_string(out, items[i].second);
    out += "}]";
  }
  return out + "]}}";
}

}  // namespace safetensors::detail
