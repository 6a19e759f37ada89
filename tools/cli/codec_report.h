// The codec report: encodes a synthetic KV cache with every scheme and
// tabulates bytes on the wire, bits per value, compression and error.
#ifndef KVWIRE_TOOLS_CLI_CODEC_REPORT_H_
#define KVWIRE_TOOLS_CLI_CODEC_REPORT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/codec/synthetic_kv.h"
#include "kvwire/v1/kvwire.pb.h"

namespace kvwire {

struct CodecReportRow {
  std::string label;  // e.g. "int4 group32 asym".
  v1::TransferSpec spec;
  int64_t wire_bytes = 0;  // Serialized KvChunk stream, header to trailer.
  int64_t payload_bytes = 0;
  int64_t scale_bytes = 0;
  int64_t index_bytes = 0;
  int64_t header_bytes = 0;
  double bits_per_value = 0;  // wire bytes * 8 / values in the cache.
  double compression = 0;     // bf16 wire bytes / wire bytes.
  double relative_error = 0;  // ||x^ - x|| / ||x|| over sent K and V.
  double encode_ms = 0;       // Median over repetitions.
  double decode_ms = 0;
};

// The specs the report covers, labelled: every scheme table row (at least
// one entry each, bf16 first), then entropy coding and token selection.
std::vector<std::pair<std::string, v1::TransferSpec>> DefaultReportSpecs();

// Runs each spec `repetitions` times over one synthetic cache.
absl::StatusOr<std::vector<CodecReportRow>> RunCodecReport(
    const SyntheticKvOptions& cache,
    const std::vector<std::pair<std::string, v1::TransferSpec>>& specs,
    int repetitions);

std::string FormatCodecReportTable(const SyntheticKvOptions& cache,
                                   const std::vector<CodecReportRow>& rows);
std::string FormatCodecReportJson(const SyntheticKvOptions& cache,
                                  const std::vector<CodecReportRow>& rows);

}  // namespace kvwire

#endif  // KVWIRE_TOOLS_CLI_CODEC_REPORT_H_
