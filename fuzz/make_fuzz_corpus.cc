// Writes seed inputs for chunk_decoder_fuzzer: valid streams of a small
// synthetic cache under a few transfer specs, in the fuzzer's record format.
#include <ATen/ATen.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>

#include "common/codec/kv_codec.h"
#include "common/codec/synthetic_kv.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: kvwire_make_fuzz_corpus OUT_DIR\n";
    return 2;
  }
  kvwire::SyntheticKvOptions o;
  o.layers = 2;
  o.tokens = 9;
  o.head_dim = 32;
  const auto cache = kvwire::MakeSyntheticKv(o);
  const auto model = kvwire::SyntheticModelInfo(o);
  int n = 0;
  for (auto scheme : {kvwire::v1::SCHEME_INT4, kvwire::v1::SCHEME_FP8_E4M3,
                      kvwire::v1::SCHEME_NF4, kvwire::v1::SCHEME_INT2}) {
    for (int variant = 0; variant < 3; ++variant) {
      kvwire::v1::TransferSpec spec;
      spec.set_scheme(scheme);
      spec.set_granularity(kvwire::v1::GRANULARITY_PER_GROUP);
      spec.set_group_size(16);
      spec.set_asymmetric(variant == 1);
      if (variant == 2) {
        spec.mutable_selection()->set_mode(kvwire::v1::SELECTION_VNORM_TOPK);
        spec.mutable_selection()->set_proportion(0.5);
        spec.mutable_entropy()->set_coder(kvwire::v1::ENTROPY_CODER_ZSTD);
      }
      auto encoder = kvwire::KvStreamEncoder::Create(model, 9, spec, "fuzz");
      std::vector<kvwire::v1::KvChunk> chunks;
      if (!encoder.ok() || !(*encoder)->Start(&chunks).ok()) return 1;
      for (size_t l = 0; l < cache.size(); ++l) {
        if (!(*encoder)
                 ->AddLayer(l, cache[l].first, cache[l].second, &chunks)
                 .ok()) {
          return 1;
        }
      }
      chunks.push_back(*(*encoder)->Finish(0));
      std::string out(1, '\0');
      for (const auto& c : chunks) {
        const std::string s = c.SerializeAsString();
        const uint32_t len = s.size();
        out.append(reinterpret_cast<const char*>(&len), 4);
        out += s;
      }
      std::ofstream(std::string(argv[1]) + "/seed" + std::to_string(n++),
                    std::ios::binary)
          << out;
    }
  }
  std::cout << n << " seeds written\n";
  return 0;
}
