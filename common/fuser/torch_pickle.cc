// Over 700 lines on purpose: the unpickler (the pickle subset state dicts
// use, one opcode switch) is most of it and reads best whole; splitting the
// writer out would add a Torch translation unit, which kvwire_fuser keeps
// few (CMakeLists.txt) for build time.
#include "common/fuser/torch_pickle.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/torch_guard.h"

namespace kvwire {
namespace {

// ---------------------------------------------------------------------------
// A restricted unpickler. Objects live in an arena and refer to each other by
// index, so cycles made through the memo are harmless and nothing recurses.

enum class Kind {
  kNone,
  kBool,
  kInt,
  kFloat,
  kStr,
  kTuple,
  kList,
  kDict,  // items: k0, v0, k1, v1, ...
  kGlobal,
  kStorage,
  kTensor,
};

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kStr:
      return "str";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kGlobal:
      return "global";
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
  }
  return "?";
}

struct Obj {
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;  // kStr; kGlobal: "module.name".
  std::vector<size_t> items;
  at::Tensor tensor;  // kStorage: the flat typed storage; kTensor.
};

// Loads storage record `key` as a flat CPU tensor of `numel` elements.
using StorageLoader = std::function<absl::StatusOr<at::Tensor>(
    const std::string& key, at::ScalarType dtype, int64_t numel)>;

const std::map<std::string, at::ScalarType>& StorageTypes() {
  static const auto* const kTypes = new std::map<std::string, at::ScalarType>{
      {"torch.FloatStorage", at::kFloat},
      {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},
      {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},
      {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},
      {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},
      {"torch.BoolStorage", at::kBool},
      {"torch.UntypedStorage", at::kByte},
      {"torch.storage.UntypedStorage", at::kByte},
  };
  return *kTypes;
}

const std::set<std::string>& CallableGlobals() {
  static const auto* const kNames = new std::set<std::string>{
      "collections.OrderedDict",
      "torch._utils._rebuild_tensor_v2",
      "torch._utils._rebuild_tensor",
      "torch._utils._rebuild_parameter",
      "torch._utils._rebuild_parameter_with_state",
  };
  return *kNames;
}

class Unpickler {
 public:
  Unpickler(absl::string_view data, StorageLoader loader)
      : data_(data), loader_(std::move(loader)) {}

  // Index of the unpickled top-level object.
  absl::StatusOr<size_t> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Truncated();
      const size_t op_pos = pos_;
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      bool stop = false;
      absl::Status st = Step(op, &stop);
      if (!st.ok()) {
        return absl::Status(
            st.code(), absl::StrCat(st.message(), " (pickle opcode 0x",
                                    absl::Hex(op), " at offset ", op_pos, ")"));
      }
      if (stop) break;
    }
    if (stack_.size() != 1 || !marks_.empty()) {
      return absl::DataLossError("pickle: STOP with an unbalanced stack");
    }
    return stack_.back();
  }

  const Obj& obj(size_t i) const { return objs_[i]; }

 private:
  absl::Status Truncated() const {
    return absl::DataLossError(
        absl::StrCat("pickle truncated at offset ", pos_));
  }
  absl::StatusOr<absl::string_view> Read(size_t n) {
    if (n > data_.size() - pos_) return Truncated();
    absl::string_view v = data_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  absl::StatusOr<uint64_t> ReadUint(size_t n) {
    ASSIGN_OR_RETURN(absl::string_view b, Read(n));
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b[k])) << (8 * k);
    }
    return v;
  }
  absl::StatusOr<absl::string_view> ReadLine() {
    const size_t end = data_.find('\n', pos_);
    if (end == absl::string_view::npos) return Truncated();
    absl::string_view v = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return v;
  }

  size_t New(Obj o) {
    objs_.push_back(std::move(o));
    return objs_.size() - 1;
  }
  size_t NewInt(int64_t v) {
    Obj o;
    o.kind = Kind::kInt;
    o.i = v;
    return New(std::move(o));
  }
  size_t NewStr(absl::string_view v) {
    Obj o;
    o.kind = Kind::kStr;
    o.s = std::string(v);
    return New(std::move(o));
  }
  size_t NewContainer(Kind kind, std::vector<size_t> items = {}) {
    Obj o;
    o.kind = kind;
    o.items = std::move(items);
    return New(std::move(o));
  }

  absl::StatusOr<size_t> Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) {
      return absl::DataLossError("pickle stack underflow");
    }
    size_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  absl::StatusOr<size_t> Top() const {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) {
      return absl::DataLossError("pickle stack underflow");
    }
    return stack_.back();
  }
  absl::StatusOr<std::vector<size_t>> PopMark() {
    if (marks_.empty()) return absl::DataLossError("pickle: no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<size_t> items(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return items;
  }
  absl::Status PopTuple(size_t n) {
    if (stack_.size() < n ||
        (!marks_.empty() && stack_.size() - n < marks_.back())) {
      return absl::DataLossError("pickle stack underflow");
    }
    std::vector<size_t> items(stack_.end() - n, stack_.end());
    stack_.resize(stack_.size() - n);
    stack_.push_back(NewContainer(Kind::kTuple, std::move(items)));
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> Memo(uint64_t key) const {
    auto it = memo_.find(key);
    if (it == memo_.end()) {
      return absl::DataLossError(absl::StrCat("pickle memo ", key, " unset"));
    }
    return it->second;
  }
  absl::Status Put(uint64_t key) {
    ASSIGN_OR_RETURN(size_t top, Top());
    memo_[key] = top;
    return absl::OkStatus();
  }
  absl::Status Expect(size_t idx, Kind kind, absl::string_view what) const {
    if (objs_[idx].kind != kind) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": expected ", KindName(kind), ", got ",
                       KindName(objs_[idx].kind)));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<int64_t>> IntTuple(size_t idx,
                                                absl::string_view what) const {
    const Obj& o = objs_[idx];
    if (o.kind != Kind::kTuple && o.kind != Kind::kList) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": expected a tuple of ints"));
    }
    std::vector<int64_t> out;
    for (size_t e : o.items) {
      if (objs_[e].kind != Kind::kInt) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": expected a tuple of ints"));
      }
      out.push_back(objs_[e].i);
    }
    return out;
  }

  absl::Status Global(std::string module, std::string name) {
    std::string full = absl::StrCat(module, ".", name);
    if (!CallableGlobals().count(full) && !StorageTypes().count(full)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported pickle global ", full,
                       " (only state dicts of tensors can be read)"));
    }
    Obj o;
    o.kind = Kind::kGlobal;
    o.s = std::move(full);
    stack_.push_back(New(std::move(o)));
    return absl::OkStatus();
  }

  absl::Status PersistentLoad(size_t pid_idx) {
    const Obj& pid = objs_[pid_idx];
    if (pid.kind != Kind::kTuple || pid.items.size() < 5 ||
        objs_[pid.items[0]].kind != Kind::kStr ||
        objs_[pid.items[0]].s != "storage") {
      return absl::InvalidArgumentError(
          "persistent id is not ('storage', type, key, location, numel)");
    }
    const Obj& type = objs_[pid.items[1]];
    const Obj& key = objs_[pid.items[2]];
    const Obj& numel = objs_[pid.items[4]];
    if (type.kind != Kind::kGlobal || !StorageTypes().count(type.s)) {
      return absl::InvalidArgumentError("persistent id: unknown storage type");
    }
    if (key.kind != Kind::kStr || numel.kind != Kind::kInt || numel.i < 0) {
      return absl::InvalidArgumentError("persistent id: bad key or numel");
    }
    ASSIGN_OR_RETURN(at::Tensor storage,
                     loader_(key.s, StorageTypes().at(type.s), numel.i));
    Obj o;
    o.kind = Kind::kStorage;
    o.tensor = std::move(storage);
    stack_.push_back(New(std::move(o)));
    return absl::OkStatus();
  }

  absl::StatusOr<at::Tensor> RebuildTensor(const std::vector<size_t>& args) {
    if (args.size() < 4) {
      return absl::InvalidArgumentError("_rebuild_tensor: too few arguments");
    }
    RETURN_IF_ERROR(Expect(args[0], Kind::kStorage, "_rebuild_tensor"));
    RETURN_IF_ERROR(Expect(args[1], Kind::kInt, "_rebuild_tensor offset"));
    const at::Tensor& storage = objs_[args[0]].tensor;
    const int64_t offset = objs_[args[1]].i;
    ASSIGN_OR_RETURN(std::vector<int64_t> size,
                     IntTuple(args[2], "_rebuild_tensor size"));
    ASSIGN_OR_RETURN(std::vector<int64_t> stride,
                     IntTuple(args[3], "_rebuild_tensor stride"));
    if (size.size() != stride.size()) {
      return absl::InvalidArgumentError(
          "_rebuild_tensor: size and stride ranks differ");
    }
    if (offset < 0) {
      return absl::InvalidArgumentError("_rebuild_tensor: negative offset");
    }
    // Extent check: offset + sum((size-1)*stride) < numel (if non-empty).
    bool empty = false;
    for (size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) {
        return absl::InvalidArgumentError(
            "_rebuild_tensor: negative size or stride");
      }
      if (size[d] == 0) empty = true;
    }
    const int64_t numel = storage.numel();
    if (!empty) {
      int64_t last = offset;
      for (size_t d = 0; d < size.size(); ++d) {
        int64_t step = 0;
        if (__builtin_mul_overflow(size[d] - 1, stride[d], &step) ||
            __builtin_add_overflow(last, step, &last)) {
          return absl::DataLossError("_rebuild_tensor: extent overflows");
        }
      }
      if (last >= numel) {
        return absl::DataLossError(
            absl::StrCat("_rebuild_tensor: tensor reaches element ", last,
                         " of a storage of ", numel));
      }
    } else if (offset > numel) {
      return absl::DataLossError("_rebuild_tensor: offset past the storage");
    }
    return storage.as_strided(size, stride, offset);
  }

  absl::Status Reduce(size_t callable, size_t args_idx) {
    RETURN_IF_ERROR(Expect(callable, Kind::kGlobal, "REDUCE callable"));
    const std::string name = objs_[callable].s;
    if (objs_[args_idx].kind != Kind::kTuple) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": arguments are not a tuple"));
    }
    const std::vector<size_t> args = objs_[args_idx].items;
    if (name == "collections.OrderedDict") {
      std::vector<size_t> items;
      if (args.size() == 1) {  // OrderedDict([(k, v), ...]).
        const Obj& pairs = objs_[args[0]];
        if (pairs.kind != Kind::kList && pairs.kind != Kind::kTuple) {
          return absl::InvalidArgumentError("OrderedDict: bad argument");
        }
        for (size_t p : pairs.items) {
          if (objs_[p].kind != Kind::kTuple || objs_[p].items.size() != 2) {
            return absl::InvalidArgumentError("OrderedDict: bad pair");
          }
          items.push_back(objs_[p].items[0]);
          items.push_back(objs_[p].items[1]);
        }
      } else if (!args.empty()) {
        return absl::InvalidArgumentError("OrderedDict: bad arguments");
      }
      stack_.push_back(NewContainer(Kind::kDict, std::move(items)));
      return absl::OkStatus();
    }
    if (name == "torch._utils._rebuild_tensor_v2" ||
        name == "torch._utils._rebuild_tensor") {
      ASSIGN_OR_RETURN(at::Tensor t, RebuildTensor(args));
      Obj o;
      o.kind = Kind::kTensor;
      o.tensor = std::move(t);
      stack_.push_back(New(std::move(o)));
      return absl::OkStatus();
    }
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      if (args.empty()) {
        return absl::InvalidArgumentError(name + ": no arguments");
      }
      RETURN_IF_ERROR(Expect(args[0], Kind::kTensor, name));
      stack_.push_back(args[0]);
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("pickle global ", name, " cannot be called"));
  }

  absl::Status SetItems(size_t dict, const std::vector<size_t>& kv) {
    RETURN_IF_ERROR(Expect(dict, Kind::kDict, "SETITEMS target"));
    if (kv.size() % 2 != 0) {
      return absl::DataLossError("SETITEMS: odd number of items");
    }
    auto& items = objs_[dict].items;
    items.insert(items.end(), kv.begin(), kv.end());
    return absl::OkStatus();
  }

  absl::Status Step(uint8_t op, bool* stop) {
    switch (op) {
      case 0x80: {  // PROTO
        ASSIGN_OR_RETURN(uint64_t proto, ReadUint(1));
        if (proto > 5) {
          return absl::InvalidArgumentError(
              absl::StrCat("pickle protocol ", proto));
        }
        return absl::OkStatus();
      }
      case 0x95:  // FRAME
        return Read(8).status();
      case '.':  // STOP
        *stop = true;
        return absl::OkStatus();
      case '(':  // MARK
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case '}':  // EMPTY_DICT
        stack_.push_back(NewContainer(Kind::kDict));
        return absl::OkStatus();
      case ']':  // EMPTY_LIST
        stack_.push_back(NewContainer(Kind::kList));
        return absl::OkStatus();
      case ')':  // EMPTY_TUPLE
        stack_.push_back(NewContainer(Kind::kTuple));
        return absl::OkStatus();
      case 't': {  // TUPLE
        ASSIGN_OR_RETURN(std::vector<size_t> items, PopMark());
        stack_.push_back(NewContainer(Kind::kTuple, std::move(items)));
        return absl::OkStatus();
      }
      case 0x85:  // TUPLE1
        return PopTuple(1);
      case 0x86:  // TUPLE2
        return PopTuple(2);
      case 0x87:  // TUPLE3
        return PopTuple(3);
      case 'l': {  // LIST
        ASSIGN_OR_RETURN(std::vector<size_t> items, PopMark());
        stack_.push_back(NewContainer(Kind::kList, std::move(items)));
        return absl::OkStatus();
      }
      case 'd': {  // DICT
        ASSIGN_OR_RETURN(std::vector<size_t> items, PopMark());
        if (items.size() % 2 != 0) {
          return absl::DataLossError("DICT: odd number of items");
        }
        stack_.push_back(NewContainer(Kind::kDict, std::move(items)));
        return absl::OkStatus();
      }
      case 'a': {  // APPEND
        ASSIGN_OR_RETURN(size_t v, Pop());
        ASSIGN_OR_RETURN(size_t list, Top());
        RETURN_IF_ERROR(Expect(list, Kind::kList, "APPEND target"));
        objs_[list].items.push_back(v);
        return absl::OkStatus();
      }
      case 'e': {  // APPENDS
        ASSIGN_OR_RETURN(std::vector<size_t> items, PopMark());
        ASSIGN_OR_RETURN(size_t list, Top());
        RETURN_IF_ERROR(Expect(list, Kind::kList, "APPENDS target"));
        auto& dst = objs_[list].items;
        dst.insert(dst.end(), items.begin(), items.end());
        return absl::OkStatus();
      }
      case 's': {  // SETITEM
        ASSIGN_OR_RETURN(size_t v, Pop());
        ASSIGN_OR_RETURN(size_t k, Pop());
        ASSIGN_OR_RETURN(size_t dict, Top());
        return SetItems(dict, {k, v});
      }
      case 'u': {  // SETITEMS
        ASSIGN_OR_RETURN(std::vector<size_t> items, PopMark());
        ASSIGN_OR_RETURN(size_t dict, Top());
        return SetItems(dict, items);
      }
      case 'J': {  // BININT
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(4));
        stack_.push_back(NewInt(static_cast<int32_t>(v)));
        return absl::OkStatus();
      }
      case 'K': {  // BININT1
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(1));
        stack_.push_back(NewInt(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 'M': {  // BININT2
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(2));
        stack_.push_back(NewInt(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 0x8a:    // LONG1
      case 0x8b: {  // LONG4
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(op == 0x8a ? 1 : 4));
        if (n > 8) {
          return absl::InvalidArgumentError("integer wider than 64 bits");
        }
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(n));
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) {
          v |= ~uint64_t{0} << (8 * n);  // Sign-extend.
        }
        stack_.push_back(NewInt(static_cast<int64_t>(v)));
        return absl::OkStatus();
      }
      case 'I': {  // INT (text; "00"/"01" are False/True)
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        if (line == "00" || line == "01") {
          Obj o;
          o.kind = Kind::kBool;
          o.i = line == "01";
          stack_.push_back(New(std::move(o)));
          return absl::OkStatus();
        }
        int64_t v = 0;
        if (!absl::SimpleAtoi(line, &v)) {
          return absl::InvalidArgumentError("INT: not an integer");
        }
        stack_.push_back(NewInt(v));
        return absl::OkStatus();
      }
      case 'G': {  // BINFLOAT (big-endian)
        ASSIGN_OR_RETURN(absl::string_view b, Read(8));
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) {
          bits = (bits << 8) | static_cast<uint8_t>(b[k]);
        }
        Obj o;
        o.kind = Kind::kFloat;
        std::memcpy(&o.f, &bits, sizeof(o.f));
        stack_.push_back(New(std::move(o)));
        return absl::OkStatus();
      }
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        Obj o;
        o.kind = Kind::kBool;
        o.i = op == 0x88;
        stack_.push_back(New(std::move(o)));
        return absl::OkStatus();
      }
      case 'N':  // NONE
        stack_.push_back(New(Obj{}));
        return absl::OkStatus();
      case 'X':    // BINUNICODE
      case 0x8c:   // SHORT_BINUNICODE
      case 0x8d:   // BINUNICODE8
      case 'C':    // SHORT_BINBYTES
      case 'B':    // BINBYTES
      case 'U':    // SHORT_BINSTRING
      case 'T': {  // BINSTRING
        const size_t width = (op == 0x8c || op == 'C' || op == 'U') ? 1
                             : (op == 0x8d)                         ? 8
                                                                    : 4;
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(width));
        if (n > data_.size()) return Truncated();
        ASSIGN_OR_RETURN(absl::string_view s, Read(n));
        stack_.push_back(NewStr(s));
        return absl::OkStatus();
      }
      case 'c': {  // GLOBAL
        ASSIGN_OR_RETURN(absl::string_view module, ReadLine());
        ASSIGN_OR_RETURN(absl::string_view name, ReadLine());
        return Global(std::string(module), std::string(name));
      }
      case 0x93: {  // STACK_GLOBAL
        ASSIGN_OR_RETURN(size_t name, Pop());
        ASSIGN_OR_RETURN(size_t module, Pop());
        RETURN_IF_ERROR(Expect(name, Kind::kStr, "STACK_GLOBAL name"));
        RETURN_IF_ERROR(Expect(module, Kind::kStr, "STACK_GLOBAL module"));
        return Global(objs_[module].s, objs_[name].s);
      }
      case 'R':     // REDUCE
      case 0x81: {  // NEWOBJ
        ASSIGN_OR_RETURN(size_t args, Pop());
        ASSIGN_OR_RETURN(size_t callable, Pop());
        return Reduce(callable, args);
      }
      case 'b': {  // BUILD: the state (e.g. a state dict's _metadata) is
                   // not needed.
        ASSIGN_OR_RETURN(size_t state, Pop());
        (void)state;
        return Top().status();
      }
      case 'Q': {  // BINPERSID
        ASSIGN_OR_RETURN(size_t pid, Pop());
        return PersistentLoad(pid);
      }
      case 'q': {  // BINPUT
        ASSIGN_OR_RETURN(uint64_t k, ReadUint(1));
        return Put(k);
      }
      case 'r': {  // LONG_BINPUT
        ASSIGN_OR_RETURN(uint64_t k, ReadUint(4));
        return Put(k);
      }
      case 'p': {  // PUT
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        uint64_t k = 0;
        if (!absl::SimpleAtoi(line, &k)) {
          return absl::InvalidArgumentError("PUT: bad memo key");
        }
        return Put(k);
      }
      case 0x94:  // MEMOIZE
        return Put(memo_.size());
      case 'h':    // BINGET
      case 'j': {  // LONG_BINGET
        ASSIGN_OR_RETURN(uint64_t k, ReadUint(op == 'h' ? 1 : 4));
        ASSIGN_OR_RETURN(size_t v, Memo(k));
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case 'g': {  // GET
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        uint64_t k = 0;
        if (!absl::SimpleAtoi(line, &k)) {
          return absl::InvalidArgumentError("GET: bad memo key");
        }
        ASSIGN_OR_RETURN(size_t v, Memo(k));
        stack_.push_back(v);
        return absl::OkStatus();
      }
      case '0':  // POP
        return Pop().status();
      case '1':  // POP_MARK
        return PopMark().status();
      case '2': {  // DUP
        ASSIGN_OR_RETURN(size_t v, Top());
        stack_.push_back(v);
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(absl::StrFormat(
            "unsupported pickle opcode 0x%02x ('%c')", op,
            (op >= 32 && op < 127) ? static_cast<char>(op) : '?'));
    }
  }

  absl::string_view data_;
  size_t pos_ = 0;
  StorageLoader loader_;
  std::vector<Obj> objs_;
  std::vector<size_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, size_t> memo_;
};

// Storage class names torch.save uses, or nullptr.
const char* StorageClass(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "FloatStorage";
    case at::kDouble:
      return "DoubleStorage";
    case at::kHalf:
      return "HalfStorage";
    case at::kBFloat16:
      return "BFloat16Storage";
    case at::kLong:
      return "LongStorage";
    case at::kInt:
      return "IntStorage";
    case at::kShort:
      return "ShortStorage";
    case at::kChar:
      return "CharStorage";
    case at::kByte:
      return "ByteStorage";
    case at::kBool:
      return "BoolStorage";
    default:
      return nullptr;
  }
}

// Emits pickle protocol 2 opcodes.
class PickleWriter {
 public:
  void Op(uint8_t op) { out_.push_back(static_cast<char>(op)); }
  void Proto() {
    Op(0x80);
    Op(2);
  }
  void Global(absl::string_view module, absl::string_view name) {
    Op('c');
    absl::StrAppend(&out_, module, "\n", name, "\n");
  }
  void Str(absl::string_view s) {
    Op('X');  // BINUNICODE
    Le(s.size(), 4);
    out_.append(s.data(), s.size());
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      Op('K');
      Le(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v < 65536) {
      Op('M');
      Le(static_cast<uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op('J');
      Le(static_cast<uint64_t>(static_cast<uint32_t>(static_cast<int32_t>(v))),
         4);
    } else {
      Op(0x8a);  // LONG1, 8 bytes two's complement.
      Le(8, 1);
      Le(static_cast<uint64_t>(v), 8);
    }
  }
  void IntTuple(at::IntArrayRef values) {
    if (values.empty()) {
      Op(')');
      return;
    }
    Op('(');
    for (int64_t v : values) Int(v);
    Op('t');
  }
  const std::string& bytes() const { return out_; }

 private:
  void Le(uint64_t v, int n) {
    for (int k = 0; k < n; ++k) out_.push_back(static_cast<char>(v >> (8 * k)));
  }
  std::string out_;
};

absl::StatusOr<TensorList> ParseZip(const std::string& bytes,
                                    absl::string_view name) {
  if (bytes.size() < 4 || bytes.compare(0, 4, "PK\x03\x04") != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name,
        ": not a zip-format torch.save file (the legacy pre-1.6 format is "
        "not supported; re-save it with a recent torch)"));
  }
  std::istringstream in(bytes);
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  RETURN_IF_ERROR(GuardedAs(
      absl::StatusCode::kDataLoss, absl::StrCat(name, ": bad zip archive"),
      [&]() -> absl::Status {
        reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(&in);
        return absl::OkStatus();
      }));
  return GuardedAs(
      absl::StatusCode::kDataLoss, name, [&]() -> absl::StatusOr<TensorList> {
        if (reader->hasRecord("byteorder")) {
          auto [ptr, size] = reader->getRecord("byteorder");
          std::string order(static_cast<const char*>(ptr.get()), size);
          if (order != "little") {
            return absl::UnimplementedError(
                absl::StrCat(name, ": byte order \"", order, "\""));
          }
        }
        if (!reader->hasRecord("data.pkl")) {
          return absl::DataLossError(
              absl::StrCat(name, ": no data.pkl record"));
        }
        auto [pkl, pkl_size] = reader->getRecord("data.pkl");
        absl::string_view pickle(static_cast<const char*>(pkl.get()), pkl_size);

        std::map<std::string, at::Tensor> storages;
        StorageLoader loader =
            [&](const std::string& key, at::ScalarType dtype,
                int64_t numel) -> absl::StatusOr<at::Tensor> {
          auto it = storages.find(key);
          if (it != storages.end()) {
            if (it->second.scalar_type() != dtype ||
                it->second.numel() != numel) {
              return absl::DataLossError(absl::StrCat(
                  "storage ", key, " referenced with different types"));
            }
            return it->second;
          }
          const std::string record = "data/" + key;
          if (!reader->hasRecord(record)) {
            return absl::DataLossError(
                absl::StrCat("missing storage record ", record));
          }
          auto [data, size] = reader->getRecord(record);
          const int64_t itemsize = c10::elementSize(dtype);
          if (numel > static_cast<int64_t>(size) / itemsize) {
            return absl::DataLossError(
                absl::StrCat("storage record ", record, " holds ", size,
                             " bytes; ", numel, " elements of ",
                             c10::toString(dtype), " need ", numel * itemsize));
          }
          at::Tensor t;
          if (numel == 0) {
            t = at::empty({0}, at::TensorOptions().dtype(dtype));
          } else {
            auto holder = std::make_shared<at::DataPtr>(std::move(data));
            void* raw = holder->get();
            t = at::from_blob(
                raw, {numel}, [holder](void*) mutable { holder.reset(); },
                at::TensorOptions().dtype(dtype));
          }
          storages.emplace(key, t);
          return t;
        };

        Unpickler unpickler(pickle, loader);
        absl::StatusOr<size_t> top = unpickler.Run();
        if (!top.ok()) {
          return absl::Status(top.status().code(),
                              absl::StrCat(name, ": ", top.status().message()));
        }
        const Obj& dict = unpickler.obj(*top);
        if (dict.kind != Kind::kDict) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": top-level object is a ",
                           KindName(dict.kind), ", not a dict of tensors"));
        }
        TensorList out;
        std::map<std::string, size_t> position;
        for (size_t k = 0; k + 1 < dict.items.size(); k += 2) {
          const Obj& key = unpickler.obj(dict.items[k]);
          const Obj& value = unpickler.obj(dict.items[k + 1]);
          if (key.kind != Kind::kStr) {
            return absl::InvalidArgumentError(absl::StrCat(
                name, ": a key is a ", KindName(key.kind), ", not a str"));
          }
          if (value.kind != Kind::kTensor) {
            return absl::InvalidArgumentError(
                absl::StrCat(name, ": \"", key.s, "\" is a ",
                             KindName(value.kind), ", not a tensor"));
          }
          auto [it, inserted] = position.emplace(key.s, out.size());
          if (inserted) {
            out.emplace_back(key.s, value.tensor);
          } else {
            out[it->second].second = value.tensor;  // Python: the last wins.
          }
        }
        return out;
      });
}

}  // namespace

absl::StatusOr<TensorList> ParseTorchStateDict(const std::string& bytes,
                                               absl::string_view name) {
  return ParseZip(bytes, name);
}

absl::StatusOr<TensorList> ReadTorchStateDict(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
  return ParseZip(bytes, path);
}

absl::StatusOr<std::string> SerializeTorchStateDict(const TensorList& tensors) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\" is undefined"));
    }
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name \"", name, "\""));
    }
    if (!StorageClass(t.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\" has unsupported dtype ",
                       c10::toString(t.scalar_type())));
    }
  }
  return Guarded(
      "writing a torch.save file", [&]() -> absl::StatusOr<std::string> {
        std::string out;
        {
          caffe2::serialize::PyTorchStreamWriter writer(
              [&out](const void* data, size_t size) -> size_t {
                out.append(static_cast<const char*>(data), size);
                return size;
              });
          // What torch.save(OrderedDict) writes (protocol 2): an OrderedDict of
          // str -> _rebuild_tensor_v2(storage, 0, size, stride, False,
          // OrderedDict()), one storage record per tensor.
          PickleWriter p;
          std::vector<at::Tensor> storages;
          p.Proto();
          p.Global("collections", "OrderedDict");
          p.Op(')');  // EMPTY_TUPLE
          p.Op('R');  // REDUCE
          p.Op('(');  // MARK
          for (const auto& [name, t] : tensors) {
            at::Tensor cpu = t.detach().to(at::kCPU).contiguous();
            if (cpu.storage_offset() != 0 ||
                cpu.storage().nbytes() !=
                    static_cast<size_t>(cpu.numel()) * cpu.element_size()) {
              cpu = cpu.clone();
            }
            const std::string key = std::to_string(storages.size());
            p.Str(name);
            p.Global("torch._utils", "_rebuild_tensor_v2");
            p.Op('(');  // MARK: the arguments.
            p.Op('(');  // MARK: the persistent id.
            p.Str("storage");
            p.Global("torch", StorageClass(cpu.scalar_type()));
            p.Str(key);
            p.Str("cpu");
            p.Int(cpu.numel());
            p.Op('t');  // TUPLE
            p.Op('Q');  // BINPERSID
            p.Int(0);   // storage_offset
            p.IntTuple(cpu.sizes());
            p.IntTuple(cpu.strides());
            p.Op(0x89);  // NEWFALSE: requires_grad
            p.Global("collections", "OrderedDict");
            p.Op(')');
            p.Op('R');  // backward_hooks = OrderedDict()
            p.Op('t');  // TUPLE
            p.Op('R');  // REDUCE
            storages.push_back(cpu);
          }
          p.Op('u');  // SETITEMS
          p.Op('.');  // STOP
          writer.writeRecord("data.pkl", p.bytes().data(), p.bytes().size());
          writer.writeRecord("byteorder", "little", 6);
          for (size_t i = 0; i < storages.size(); ++i) {
            const at::Tensor& t = storages[i];
            writer.writeRecord(
                absl::StrCat("data/", i), t.data_ptr(),
                static_cast<size_t>(t.numel()) * t.element_size());
          }
          writer.writeEndOfFile();
        }
        return out;
      });
}

absl::Status WriteTorchStateDict(const std::string& path,
                                 const TensorList& tensors) {
  ASSIGN_OR_RETURN(std::string bytes, SerializeTorchStateDict(tensors));
  return WriteStringToFile(path, bytes);
}

}  // namespace kvwire
